"""Pretraining data, step 2: a token store -> fixed-length blocks for one data-parallel rank.

Each epoch, documents in a (seed, epoch)-shuffled order become [BOS] ids EOS, concatenated and cut
into seq_len blocks (no padding; a block may span documents; the last partial block is dropped).
Global block k goes to rank k % world_size. A fixed share of each rank's blocks can come from a
second ("replay") store to keep the base language (Ibrahim et al. 2024, "Simple and Scalable
Strategies to Continually Pre-train Large Language Models").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kovocab.errors import ConfigError, InputError
from kovocab.pretraining.token_store import TokenStore

STATE_VERSION = 1


class BlockStream:
    """One store's packed blocks as seen by one rank, epoch after epoch, with its position."""

    def __init__(self, store: TokenStore, seq_len: int, seed: int, salt: int, rank: int, world_size: int,
                 add_bos: bool) -> None:
        self.store = store
        self.seq_len = seq_len
        self.seed, self.salt = seed, salt
        self.rank, self.world_size = rank, world_size
        self.bos_id = store.bos_id if add_bos else None
        self.lengths = np.diff(store.offsets)
        self.extra = 1 + (self.bos_id is not None)  # EOS, and BOS when used
        stream_tokens = store.num_tokens + self.extra * store.num_documents
        self.blocks_per_epoch = stream_tokens // seq_len
        # Every rank gets the same number of blocks per epoch, so ranks roll over together.
        self.blocks_per_rank = self.blocks_per_epoch // world_size
        if self.blocks_per_rank == 0:
            raise InputError(
                f"{store.path}: {stream_tokens} tokens with BOS/EOS make {self.blocks_per_epoch} blocks of "
                f"{seq_len}, fewer than one per rank ({world_size} ranks); use more text or a shorter seq_len"
            )
        self.epoch = 0
        self.index = 0  # this rank's next block within the epoch
        self._planned = -1
        self._cum = self._delta = np.zeros(0, np.int64)
        self._arange = np.arange(seq_len, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """The document order of `epoch`: a permutation drawn from (seed, salt, epoch) alone."""
        rng = np.random.default_rng([self.seed, self.salt, epoch])
        return rng.permutation(self.store.num_documents)

    def _plan(self, epoch: int) -> None:
        # Per epoch, once: where each document starts in the stream (cum) and the shift from a
        # stream position to its index in tokens.bin (delta), so a block is one gather.
        order = self.order(epoch)
        cum = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(self.lengths[order] + self.extra, out=cum[1:])
        self._cum = cum
        self._delta = self.store.offsets[order] - cum[:-1] - (self.bos_id is not None)
        self._planned = epoch

    def fill(self, row: np.ndarray) -> None:
        """Write this rank's next block into `row` (int64, seq_len) and advance."""
        if self.index == self.blocks_per_rank:
            self.epoch, self.index = self.epoch + 1, 0
        if self._planned != self.epoch:
            self._plan(self.epoch)
        start = (self.index * self.world_size + self.rank) * self.seq_len
        self.block_at(start, row)
        self.index += 1

    def block_at(self, start: int, row: np.ndarray) -> None:
        """The seq_len stream tokens from `start` of the planned epoch."""
        cum, end = self._cum, start + self.seq_len
        first = int(np.searchsorted(cum, start, side="right")) - 1
        stop = int(np.searchsorted(cum, end, side="left"))  # documents first..stop-1 overlap
        bounds = cum[first : stop + 1].copy()
        bounds[0], bounds[-1] = start, end
        idx = np.repeat(self._delta[first:stop], np.diff(bounds))
        idx += self._arange
        idx += start
        # BOS/EOS positions point just outside their document; clip, then overwrite them.
        np.clip(idx, 0, self.store.num_tokens - 1, out=idx)
        row[:] = self.store.tokens[idx]
        eos = cum[first + 1 : stop + 1] - 1
        row[eos[eos < end] - start] = self.store.eos_id
        if self.bos_id is not None:
            bos = cum[first:stop]
            row[bos[bos >= start] - start] = self.bos_id

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "documents": self.store.num_documents,
                "tokens": self.store.num_tokens}

    def load(self, state: dict[str, Any], name: str) -> None:
        if (state["documents"], state["tokens"]) != (self.store.num_documents, self.store.num_tokens):
            raise ConfigError(
                f"packing state: the {name} store had {state['documents']} documents, {state['tokens']} "
                f"tokens; {self.store.path} has {self.store.num_documents}, {self.store.num_tokens}: "
                "resume with the store the run started with"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class PackedBlocks:
    """Batches of packed blocks for one data-parallel rank, optionally mixed with replay blocks."""

    def __init__(self, store: TokenStore, seq_len: int, seed: int = 0, *, replay: TokenStore | None = None,
                 replay_ratio: float = 0.0, rank: int = 0, world_size: int = 1, add_bos: bool = True) -> None:
        problems = []
        if seq_len < 2:
            problems.append(f"packing.seq_len: must be at least 2, got {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            problems.append(f"packing: rank {rank} is not within world_size {world_size}")
        if not 0.0 <= replay_ratio < 1.0:
            problems.append(f"packing.replay_ratio: must be within [0, 1), got {replay_ratio}")
        if replay_ratio > 0 and replay is None:
            problems.append("packing.replay_ratio: > 0 but no replay store; build one from English text")
        if problems:
            raise ConfigError(problems)
        if replay is not None and (replay.vocab_size, replay.eos_id) != (store.vocab_size, store.eos_id):
            raise InputError(
                f"{replay.path}: replay store was built with a different tokenizer (vocab "
                f"{replay.vocab_size}, EOS {replay.eos_id}) than {store.path} (vocab {store.vocab_size}, "
                f"EOS {store.eos_id}); rebuild it with the same tokenizer"
            )
        self.seq_len, self.seed, self.add_bos = seq_len, seed, add_bos
        self.rank, self.world_size = rank, world_size
        self.replay_ratio = float(replay_ratio) if replay is not None else 0.0
        self.main = BlockStream(store, seq_len, seed, 0, rank, world_size, add_bos)
        self.replay = (BlockStream(replay, seq_len, seed, 1, rank, world_size, add_bos)
                       if replay is not None and replay_ratio > 0 else None)
        self.blocks_seen = 0
        self.replay_blocks_seen = 0

    @property
    def blocks_per_epoch(self) -> int:
        """Blocks in one epoch of the main store, all ranks together."""
        return self.main.blocks_per_epoch

    @property
    def epoch(self) -> int:
        """The epoch of the main store the next main block comes from (from 0)."""
        return self.main.epoch + (self.main.index == self.main.blocks_per_rank)

    @property
    def tokens_seen(self) -> int:
        """Tokens this rank has been given, replay included."""
        return self.blocks_seen * self.seq_len

    @property
    def replay_tokens_seen(self) -> int:
        return self.replay_blocks_seen * self.seq_len

    def is_replay(self, block: int) -> bool:
        """Whether this rank's `block`-th block (from 0) comes from the replay store. The same on
        every rank; after n blocks exactly floor(n * replay_ratio) were replay, evenly spread."""
        r = self.replay_ratio
        return r > 0 and math.floor((block + 1) * r) > math.floor(block * r)

    def next_batch(self, micro_batch_size: int) -> np.ndarray:
        """The next (micro_batch_size, seq_len) int64 blocks of this rank; epochs roll over forever."""
        if micro_batch_size < 1:
            raise ConfigError(f"packing: micro_batch_size must be positive, got {micro_batch_size}")
        out = np.empty((micro_batch_size, self.seq_len), dtype=np.int64)
        for row in out:
            if self.replay is not None and self.is_replay(self.blocks_seen):
                self.replay.fill(row)
                self.replay_blocks_seen += 1
            else:
                self.main.fill(row)
            self.blocks_seen += 1
        return out

    def __iter__(self) -> PackedBlocks:
        return self

    def __next__(self) -> np.ndarray:
        return self.next_batch(1)[0]

    def state_dict(self) -> dict[str, Any]:
        """The position, as JSON-ready data; `load_state_dict` continues exactly from here."""
        return {
            "version": STATE_VERSION, "seq_len": self.seq_len, "seed": self.seed, "add_bos": self.add_bos,
            "rank": self.rank, "world_size": self.world_size, "replay_ratio": self.replay_ratio,
            "blocks_seen": self.blocks_seen, "replay_blocks_seen": self.replay_blocks_seen,
            "main": self.main.state(), "replay": self.replay.state() if self.replay is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        keys = ("version", "seq_len", "seed", "add_bos", "rank", "world_size", "replay_ratio")
        changed = [f"{k}: saved {state.get(k)!r}, now {mine[k]!r}" for k in keys if state.get(k) != mine[k]]
        if (state.get("replay") is None) != (self.replay is None):
            changed.append("replay: the saved run and this one differ in using a replay store")
        if changed:
            raise ConfigError([f"packing state does not fit this loader ({c}); resume with the same settings"
                               for c in changed])
        self.main.load(state["main"], "main")
        if self.replay is not None:
            self.replay.load(state["replay"], "replay")
        self.blocks_seen = int(state["blocks_seen"])
        self.replay_blocks_seen = int(state["replay_blocks_seen"])

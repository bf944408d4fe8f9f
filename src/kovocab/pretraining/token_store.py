"""Pretraining data, step 1: documents -> token ids on disk, tokenised once, reused by every run.

Inputs: shard folders (one split), .txt (a document per line) or .jsonl files, and a fast
tokenizer (tokenizer.json). Outputs in `out_dir`: `tokens.bin` (raw little-endian uint16, or
uint32 above 65,536 ids; no BOS/EOS), `index.npy` (int64 document offsets), `config.yaml` and
`manifest.json`, written last: a folder without it is an unfinished build (cf. Megatron's .bin/.idx).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kovocab.artifacts import (
    MANIFEST,
    Owned,
    atomic_open,
    claims_output,
    exact,
    read_manifest,
    sha256_file,
    write_config,
    write_manifest,
)
from kovocab.config import opt
from kovocab.errors import ConfigError, InputError, TokenizerError
from kovocab.tokenizer.info import TokenizerInfo, read_tokenizer
from kovocab.tokenizer.weights import WEIGHTS_DOC, SourceWeight, WeightedCorpus

log = logging.getLogger(__name__)

STAGE = "token_store"
TOKENS = "tokens.bin"
INDEX = "index.npy"
OUTPUTS = Owned(STAGE, files=exact(TOKENS, INDEX))  # what a store folder holds (artifacts.Owned)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TokenStoreConfig:
    """Tokenise a corpus once into a compact, memory-mapped token store."""

    sources: tuple[Path, ...] = opt(doc="shard folders, .txt (a document per line) or .jsonl (.gz/.xz too)")
    tokenizer: Path = opt(doc="tokenizer folder holding tokenizer.json, or the tokenizer.json file")
    out_dir: Path = opt(doc="output folder for tokens.bin, index.npy and manifest.json")
    split: Literal["train", "eval"] = opt("train", "split read from shard folders")
    batch_size: int = opt(1000, "documents per tokenizer batch")
    workers: int = opt(0, "tokenizer processes; 0: one per CPU core, 1: this process (Rust threads)")
    max_documents: int | None = opt(None, "read at most this many documents (trial runs)")
    source_weights: Mapping[str, SourceWeight] | None = opt(None, WEIGHTS_DOC)
    seed: int = opt(0, "seed of source_weights' sampling")

    def check(self) -> list[str]:
        problems = []
        if not self.sources:
            problems.append("sources: give at least one shard folder or text file")
        for p in self.sources:
            if not Path(p).exists():
                problems.append(f"sources: path not found: {p}")
            elif Path(p).is_dir() and not (Path(p) / MANIFEST).is_file():
                problems.append(f"sources: {p} is a folder without {MANIFEST}; give a `kovocab shard` "
                                "output folder or the text files themselves")
        if not Path(self.tokenizer).exists():
            problems.append(f"tokenizer: not found: {self.tokenizer} (a folder with tokenizer.json)")
        if self.batch_size <= 0:
            problems.append(f"batch_size: must be positive, got {self.batch_size}")
        if self.workers < 0:
            problems.append(f"workers: must be 0 (auto) or more, got {self.workers}")
        if self.max_documents is not None and self.max_documents <= 0:
            problems.append(f"max_documents: must be positive, got {self.max_documents}")
        return problems


def check_tokenizer(store: TokenStore, tokenizer: str | Path) -> TokenizerInfo:
    """Raise TokenizerError unless `tokenizer` is the one `store` was built with (vocab size, BOS/EOS)."""
    tok = read_tokenizer(tokenizer)
    mine = (store.vocab_size, store.bos_id, store.eos_id)
    theirs = (tok.vocab_size, tok.bos_id, tok.eos_id)
    if mine != theirs:
        raise TokenizerError(
            f"{tok.file}: vocab size, BOS, EOS = {theirs}, but the token store {store.path} was built with "
            f"{mine}; rebuild the store with this tokenizer or train with the store's tokenizer"
        )
    if tok.sha256 != store.tokenizer_sha256:
        log.warning("%s differs from the tokenizer %s was built with (same size and specials)", tok.file,
                    store.path)
    return tok


class TokenStore:
    """A finished token store, memory-mapped: document i is tokens[offsets[i]:offsets[i+1]]."""

    def __init__(self, path: Path, tokens: np.ndarray, offsets: np.ndarray, manifest: dict[str, Any]) -> None:
        fmt = manifest["format"]
        self.path = path
        self.tokens = tokens
        self.offsets = offsets
        self.manifest = manifest
        self.vocab_size: int = int(fmt["vocab_size"])
        self.bos_id: int | None = None if fmt["bos_id"] is None else int(fmt["bos_id"])
        self.eos_id: int = int(fmt["eos_id"])
        self.tokenizer_sha256: str = str(manifest["key"]["tokenizer_sha256"])
        self.num_documents = len(offsets) - 1
        self.num_tokens = int(offsets[-1])

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        """Open a store built by `build_token_store`, checking it is complete and consistent."""
        path = Path(path)
        hint = "build it with build_token_store (`kovocab pretrain` does) or give the right folder"
        if not path.is_dir():
            raise InputError(f"token store not found: {path}; {hint}")
        manifest = read_manifest(path)
        if manifest is None or manifest.get("stage") != STAGE:
            raise InputError(
                f"{path}: no complete token store (no {STAGE} {MANIFEST}; an interrupted build?); {hint}"
            )
        fmt, stats = manifest.get("format", {}), manifest.get("stats", {})
        if fmt.get("version") != FORMAT_VERSION:
            raise InputError(f"{path}: token store format {fmt.get('version')!r}, expected "
                             f"{FORMAT_VERSION}; rebuild it")
        for name, entry in manifest.get("files", {}).items():
            f = path / name
            if not f.is_file() or f.stat().st_size != entry["bytes"]:
                raise InputError(f"{path}: {name} is missing or its size disagrees with {MANIFEST}; "
                                 "rebuild the store")
        dtype = np.dtype(fmt["dtype"])
        tokens_path = path / TOKENS
        if tokens_path.stat().st_size != stats["tokens"] * dtype.itemsize:
            raise InputError(f"{tokens_path}: {tokens_path.stat().st_size} bytes, manifest says "
                             f"{stats['tokens']} x {dtype.itemsize}; the store is corrupt, rebuild it")
        try:
            offsets = np.load(path / INDEX, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path / INDEX}: unreadable index ({exc}); rebuild the store") from exc
        if (
            offsets.dtype != np.int64
            or len(offsets) != stats["documents"] + 1
            or offsets[0] != 0
            or offsets[-1] != stats["tokens"]
            or not bool(np.all(offsets[1:] > offsets[:-1]))
        ):
            raise InputError(f"{path / INDEX}: offsets disagree with {MANIFEST}; the store is corrupt, "
                             "rebuild it")
        tokens = np.memmap(tokens_path, dtype=dtype, mode="r")
        return cls(path, tokens, offsets, manifest)

    def document(self, i: int) -> np.ndarray:
        """The token ids of document i (a view of the memory map, without BOS/EOS)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __len__(self) -> int:
        return self.num_documents

    def __reduce__(self) -> tuple[Any, ...]:
        # Reopen by path in a DataLoader worker rather than pickle the memory map's bytes.
        return (TokenStore.open, (self.path,))

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.path)!r}, documents={self.num_documents}, tokens={self.num_tokens}, "
                f"vocab_size={self.vocab_size}, dtype={self.tokens.dtype})")


def store_dtype(vocab_size: int) -> np.dtype[Any]:
    """uint16 while every id fits (ids < 65,536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@claims_output(OUTPUTS, "token_store.out_dir")
def build_token_store(cfg: TokenStoreConfig, progress: bool | None = None) -> TokenStore:
    """Tokenise `cfg.sources` into `cfg.out_dir`, or reuse the store already there for the same inputs."""
    problems = cfg.check()
    if problems:
        raise ConfigError([f"token_store.{p}" for p in problems])
    tok = read_tokenizer(cfg.tokenizer)
    out = Path(cfg.out_dir)
    key = _store_key(cfg, tok)
    existing = read_manifest(out)
    if existing is not None and existing.get("stage") == STAGE and existing.get("key") == key:
        try:
            store = TokenStore.open(out)
        except InputError as exc:
            log.warning("rebuilding token store: %s", exc)
        else:
            log.info("reusing token store %s (%d documents, %d tokens): same tokenizer and inputs",
                     out, store.num_documents, store.num_tokens)
            return store
    out.mkdir(parents=True, exist_ok=True)
    # Gone before anything else changes, so an interrupted rebuild never looks finished.
    (out / MANIFEST).unlink(missing_ok=True)
    dtype = store_dtype(tok.vocab_size)
    start = time.perf_counter()
    corpus = weighted_documents(cfg)
    stats = _write_tokens(cfg, corpus, tok, dtype, out, _show(progress))
    seconds = time.perf_counter() - start
    stats.update(seconds=round(seconds, 3), mb_per_s=round(stats["text_bytes"] / 1e6 / max(seconds, 1e-9), 3))
    write_config(out, STAGE, cfg)
    fmt = {"version": FORMAT_VERSION, "dtype": dtype.str, "vocab_size": tok.vocab_size,
           "bos_id": tok.bos_id, "eos_id": tok.eos_id}
    write_manifest(out, STAGE, stats, key=key, format=fmt, tokenizer=str(tok.file),
                   inputs=[str(p) for p in cfg.sources], **corpus.manifest())
    log.info("token store %s: %d documents, %d tokens (%s), %.1f MB/s", out, stats["documents"],
             stats["tokens"], dtype.name, stats["mb_per_s"])
    return TokenStore.open(out)


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _store_key(cfg: TokenStoreConfig, tok: TokenizerInfo) -> dict[str, Any]:
    """What the stored ids depend on; batch size and workers do not change them."""
    # Content, not paths: the same shards under another name are the same store. A shard
    # manifest holds the sha256 of every shard, so it stands for its folder.
    inputs = [sha256_file(p / MANIFEST) if p.is_dir() else sha256_file(p) for p in map(Path, cfg.sources)]
    key = {"tokenizer_sha256": tok.sha256, "inputs_sha256": inputs, "split": cfg.split,
           "max_documents": cfg.max_documents, "version": FORMAT_VERSION}
    if cfg.source_weights:  # only then: stores built before weights existed stay valid
        key["source_weights"] = WeightedCorpus((), cfg.source_weights).manifest()["source_weights"]
        key["seed"] = cfg.seed
    return key


def weighted_documents(cfg: TokenStoreConfig) -> WeightedCorpus:
    """`cfg.sources` with `cfg.source_weights` applied (iterate it for the texts)."""
    return WeightedCorpus(tuple(map(Path, cfg.sources)), cfg.source_weights, cfg.seed, split=cfg.split,
                          what="token_store.sources")


def iter_documents(cfg: TokenStoreConfig, corpus: WeightedCorpus | None = None) -> Iterator[str]:
    """Document texts of `cfg.sources` in order (weighted by `cfg.source_weights`), at most
    `cfg.max_documents` of them, through the corpus readers kovocab already has."""
    docs = corpus if corpus is not None else weighted_documents(cfg)
    return itertools.islice(iter(docs), cfg.max_documents)


def _write_tokens(cfg: TokenStoreConfig, corpus: WeightedCorpus, tok: TokenizerInfo, dtype: np.dtype[Any],
                  out: Path, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    lengths: list[np.ndarray] = []
    read = empty = text_bytes = 0

    def batches() -> Iterator[list[str]]:
        nonlocal read, empty
        it = iter_documents(cfg, corpus)
        while chunk := list(itertools.islice(it, cfg.batch_size)):
            read += len(chunk)
            kept = [t for t in chunk if t.strip()]
            empty += len(chunk) - len(kept)
            if kept:
                yield kept

    workers = cfg.workers or os.cpu_count() or 1
    with atomic_open(out / TOKENS) as f, tqdm(desc="tokenise", unit=" doc", unit_scale=True,
                                              disable=not progress) as bar:
        for ids, lens, nbytes in encode_batches(batches(), tok, dtype, workers):
            keep = lens > 0  # text the tokenizer maps to nothing is an empty document too
            empty += int(len(lens) - keep.sum())
            lengths.append(lens[keep])
            text_bytes += nbytes
            f.write(ids.tobytes())
            bar.update(len(lens))
        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        if not len(all_lengths):
            raise InputError(f"token_store.sources: no text found in {[str(p) for p in cfg.sources]} "
                             f"(split {cfg.split!r}, {read} documents read, {empty} empty)")
    offsets = np.zeros(len(all_lengths) + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=offsets[1:])
    with atomic_open(out / INDEX) as f:
        np.save(f, offsets, allow_pickle=False)
    if empty:
        log.info("skipped %d empty documents of %d", empty, read)
    return {"documents": len(all_lengths), "documents_read": read, "empty_documents": empty,
            "tokens": int(offsets[-1]), "text_bytes": text_bytes,
            "tokens_per_byte": round(int(offsets[-1]) / max(text_bytes, 1), 4), "workers": workers}


Encoded = tuple[np.ndarray, np.ndarray, int]  # flat ids, ids per document, UTF-8 bytes of the text


def encode_texts(tokenizer: Any, texts: list[str], dtype: np.dtype[Any]) -> Encoded:
    """One batch through the fast tokenizer: flat ids (no specials) and per-document lengths."""
    # encode_batch_fast skips the offsets, which packing never needs; the ids are the same.
    ids = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
    return flat, lens, sum(len(t.encode("utf-8")) for t in texts)


def encode_batches(batches: Iterator[list[str]], tok: TokenizerInfo, dtype: np.dtype[Any],
                   workers: int) -> Iterator[Encoded]:
    """Encoded batches in input order: in this process (Rust threads) when workers is 1 or the input
    is one batch, else in `workers` processes, so the Python half of encoding runs in parallel too."""
    head = list(itertools.islice(batches, 2))
    if workers <= 1 or len(head) < 2:
        for texts in itertools.chain(head, batches):
            yield encode_texts(tok.tokenizer, texts, dtype)
        return
    # spawn, not fork: a forked child inherits the parent's Rust thread pools and locks.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(str(tok.file),)) as pool:
        pending: deque[Future[Encoded]] = deque()
        try:
            for texts in itertools.chain(head, batches):
                pending.append(pool.submit(_encode_in_worker, texts, dtype.str))
                if len(pending) >= 2 * workers:  # bounded: a corpus never sits in memory whole
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(cancel_futures=True)


_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer_file: str) -> None:
    global _WORKER_TOKENIZER
    # One thread per process: the processes already fill the cores.
    os.environ["RAYON_RS_NUM_THREADS"] = "1"
    from tokenizers import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.from_file(tokenizer_file)


def _encode_in_worker(texts: list[str], dtype: str) -> Encoded:
    return encode_texts(_WORKER_TOKENIZER, texts, np.dtype(dtype))

"""Pretraining data: token store (real shards, real expanded and Llama-3 tokenizers) and packing."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DATA, news_file
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from kovocab.errors import ConfigError, InputError, KovocabError, TokenizerError
from kovocab.pretraining import token_store as ts
from kovocab.pretraining.packing import BlockStream, PackedBlocks
from kovocab.pretraining.token_store import (
    TokenStore,
    TokenStoreConfig,
    build_token_store,
    check_tokenizer,
)

SEQ = 64


def texts_of(shards: Path, split: str) -> list[str]:
    from kovocab.corpus import iter_shard_texts

    return list(iter_shard_texts(shards, split))


@pytest.fixture(scope="module")
def ko_store(
    tmp_path_factory: pytest.TempPathFactory, korean_shards: Path, expanded_tokenizer: Path
) -> TokenStore:
    out = tmp_path_factory.mktemp("ko_store")
    cfg = TokenStoreConfig(sources=(korean_shards,), tokenizer=expanded_tokenizer, out_dir=out, workers=1)
    return build_token_store(cfg, progress=False)


@pytest.fixture(scope="module")
def en_store(tmp_path_factory: pytest.TempPathFactory, expanded_tokenizer: Path) -> TokenStore:
    """English replay text: the English side of the Korean-English news dev set, a line per document."""
    out = tmp_path_factory.mktemp("en_store")
    cfg = TokenStoreConfig(sources=(news_file("en", out),), tokenizer=expanded_tokenizer,
                           out_dir=out / "store", workers=1)
    return build_token_store(cfg, progress=False)


def epoch_stream(store: TokenStore, order: np.ndarray, bos: bool = True) -> np.ndarray:
    head = [store.bos_id] if bos and store.bos_id is not None else []
    return np.concatenate([np.concatenate([head, store.document(int(i)), [store.eos_id]]) for i in order])


# --- token store --------------------------------------------------------------------------


def test_store_holds_the_fast_tokenizers_ids_of_every_shard_document(
    ko_store: TokenStore, korean_shards: Path, expanded_tokenizer: Path
) -> None:
    texts = texts_of(korean_shards, "train")
    tok = Tokenizer.from_file(str(expanded_tokenizer / "tokenizer.json"))
    assert ko_store.num_documents == len(texts)
    assert ko_store.tokens.dtype == np.uint16 and ko_store.vocab_size == 33024
    assert (ko_store.bos_id, ko_store.eos_id) == (1, 2)
    for i in range(0, len(texts), max(1, len(texts) // 300)):
        expected = tok.encode(texts[i], add_special_tokens=False).ids
        assert ko_store.document(i).tolist() == expected
        assert tok.decode(ko_store.document(i).tolist()) == tok.decode(expected)
    assert ko_store.num_tokens == int(ko_store.offsets[-1]) == len(ko_store.tokens)
    assert not np.isin(ko_store.tokens, [1, 2]).any()  # stored without BOS/EOS
    manifest = json.loads((ko_store.path / "manifest.json").read_text())
    assert manifest["stats"]["documents"] == len(texts)
    assert manifest["stats"]["text_bytes"] == sum(len(t.encode()) for t in texts)
    assert manifest["key"]["tokenizer_sha256"] == ts.sha256_file(expanded_tokenizer / "tokenizer.json")
    assert {"tokens.bin", "index.npy", "config.yaml"} <= set(manifest["files"])
    pickled = pickle.dumps(ko_store)  # a DataLoader worker reopens the files, never copies them
    assert len(pickled) < 1000 and pickle.loads(pickled).num_tokens == ko_store.num_tokens


def test_eval_split_and_worker_processes_give_the_same_store(
    tmp_path: Path, korean_shards: Path, expanded_tokenizer: Path
) -> None:
    texts = texts_of(korean_shards, "eval")
    stores = [
        build_token_store(TokenStoreConfig(sources=(korean_shards,), tokenizer=expanded_tokenizer,
                                           split="eval", out_dir=tmp_path / f"w{w}", workers=w,
                                           batch_size=b), progress=False)
        for w, b in ((1, 1000), (2, 7))
    ]
    assert stores[0].num_documents == len(texts) > 14
    assert (stores[0].path / "tokens.bin").read_bytes() == (stores[1].path / "tokens.bin").read_bytes()
    assert stores[1].manifest["stats"]["workers"] == 2


def test_finished_store_is_reused_without_tokenising(
    ko_store: TokenStore, korean_shards: Path, expanded_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [ko_store.path / n for n in ("tokens.bin", "index.npy", "manifest.json")]
    before = [(f.stat().st_mtime_ns, ts.sha256_file(f)) for f in files]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("re-tokenised a finished store")

    monkeypatch.setattr(ts, "encode_batches", refuse)
    cfg = TokenStoreConfig(sources=(korean_shards,), tokenizer=expanded_tokenizer, out_dir=ko_store.path,
                           workers=1, batch_size=17)  # batching does not change the ids
    again = build_token_store(cfg, progress=False)
    assert again.num_tokens == ko_store.num_tokens
    assert [(f.stat().st_mtime_ns, ts.sha256_file(f)) for f in files] == before
    # Other inputs are another store: it is rebuilt (and here refused).
    with pytest.raises(AssertionError, match="re-tokenised"):
        build_token_store(TokenStoreConfig(sources=(korean_shards,), tokenizer=expanded_tokenizer,
                                           out_dir=ko_store.path, max_documents=5), progress=False)


def test_interrupted_or_damaged_store_never_opens(
    tmp_path: Path, korean_shards: Path, expanded_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TokenStoreConfig(sources=(korean_shards,), tokenizer=expanded_tokenizer, out_dir=tmp_path / "s",
                           workers=1, split="eval")
    store = build_token_store(cfg, progress=False)
    tokens = store.path / "tokens.bin"
    data = tokens.read_bytes()
    tokens.write_bytes(data[:-2])
    with pytest.raises(InputError, match="size disagrees"):
        TokenStore.open(store.path)
    tokens.write_bytes(data)
    TokenStore.open(store.path)

    real = ts.encode_batches

    def killed(*args: Any, **kwargs: Any) -> Any:
        it = real(*args, **kwargs)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(ts, "encode_batches", killed)
    with pytest.raises(KeyboardInterrupt):
        build_token_store(TokenStoreConfig(sources=(korean_shards,), tokenizer=expanded_tokenizer,
                                           out_dir=store.path, batch_size=2, workers=1), progress=False)
    with pytest.raises(InputError, match="no complete token store"):
        TokenStore.open(store.path)


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    """Llama-3's tiktoken ranks as a tokenizer.json (transformers' converter), with its two specials."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from kovocab.tokenizer.load import LLAMA3_PAT_STR

    tok = TikTokenConverter(str(DATA / "tokenizers" / "llama3" / "tokenizer.model"),
                            pattern=LLAMA3_PAT_STR).converted()
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    out = tmp_path_factory.mktemp("llama3")
    tok.save(str(out / "tokenizer.json"))
    return out, tok


def test_vocab_over_65536_is_stored_as_uint32_and_empty_lines_are_skipped(
    tmp_path: Path, llama3_tokenizer: tuple[Path, Tokenizer]
) -> None:
    folder, tok = llama3_tokenizer
    lines = ["안녕하세요, 오늘은 날씨가 좋네요.", "", "Continued pretraining keeps English.", "  ", "한국어"]
    (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = build_token_store(TokenStoreConfig(sources=(tmp_path / "docs.txt",), tokenizer=folder,
                                               out_dir=tmp_path / "s"), progress=False)
    assert store.tokens.dtype == np.uint32 and store.vocab_size == 128002
    assert (store.bos_id, store.eos_id) == (128000, 128001)
    kept = [t for t in lines if t.strip()]
    assert [store.document(i).tolist() for i in range(len(store))] == [
        tok.encode(t, add_special_tokens=False).ids for t in kept
    ]
    assert len(store.document(0)) == 11  # the golden sentence, as the shared data README gives it
    assert store.tokens.max() > 65535
    assert store.manifest["stats"]["empty_documents"] == 2


def test_text_and_gzipped_jsonl_sources_are_read_in_order(tmp_path: Path, expanded_tokenizer: Path) -> None:
    import gzip

    records = [{"text": "첫 문서입니다.\n둘째 줄도 같은 문서."}, {"text": "JSONL second"}]
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (tmp_path / "lines.txt").write_text("한 줄이 한 문서\n\n다음 문서\n", encoding="utf-8")
    store = build_token_store(TokenStoreConfig(sources=(tmp_path / "docs.jsonl.gz", tmp_path / "lines.txt"),
                                               tokenizer=expanded_tokenizer, out_dir=tmp_path / "s"),
                              progress=False)
    tok = Tokenizer.from_file(str(expanded_tokenizer / "tokenizer.json"))
    texts = [r["text"] for r in records] + ["한 줄이 한 문서", "다음 문서"]
    assert [tok.decode(store.document(i).tolist()) for i in range(len(store))] == texts
    assert store.manifest["stats"]["empty_documents"] == 1


def test_bad_inputs_say_what_where_and_what_to_do(
    tmp_path: Path, korean_shards: Path, expanded_tokenizer: Path, ko_store: TokenStore
) -> None:
    def build(sources: tuple[Path, ...], tokenizer: Path = expanded_tokenizer) -> TokenStore:
        return build_token_store(TokenStoreConfig(sources=sources, tokenizer=tokenizer,
                                                  out_dir=tmp_path / "out", workers=1), progress=False)

    with pytest.raises(ConfigError, match=r"token_store.sources: path not found: .*nope.txt"):
        build((tmp_path / "nope.txt",))
    with pytest.raises(ConfigError, match="at least one"):
        build(())
    (tmp_path / "cp949.txt").write_bytes("안녕하세요\n".encode("cp949"))
    with pytest.raises(InputError, match="not UTF-8"):
        build((tmp_path / "cp949.txt",))
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(InputError, match="no text found"):
        build((tmp_path / "blank.txt",))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="plain is a folder without manifest.json"):
        build((tmp_path / "plain",))
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        build((korean_shards,), DATA / "llama2_tokenizer" / "tokenizer.model")
    no_eos = json.loads((expanded_tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
    no_eos["added_tokens"] = [t for t in no_eos["added_tokens"] if t["content"] != "</s>"]
    no_eos["model"]["vocab"].pop("</s>")
    (tmp_path / "no_eos").mkdir()
    (tmp_path / "no_eos" / "tokenizer.json").write_text(json.dumps(no_eos), encoding="utf-8")
    with pytest.raises(TokenizerError, match="no EOS token"):
        build((korean_shards,), tmp_path / "no_eos")
    with pytest.raises(TokenizerError, match="vocab size"):
        check_tokenizer(ko_store, DATA / "tokenizers" / "llama2_hf_json")
    assert check_tokenizer(ko_store, expanded_tokenizer).vocab_size == 33024
    with pytest.raises(InputError, match="token store not found"):
        TokenStore.open(tmp_path / "missing")


# --- packing ------------------------------------------------------------------------------


def test_blocks_of_an_epoch_are_the_epoch_stream_cut_into_seq_len(ko_store: TokenStore) -> None:
    packer = PackedBlocks(ko_store, SEQ, seed=7)
    n = packer.blocks_per_epoch
    stream = epoch_stream(ko_store, packer.main.order(0))
    assert n == len(stream) // SEQ
    blocks = packer.next_batch(n)
    assert blocks.shape == (n, SEQ) and blocks.dtype == np.int64
    assert np.array_equal(blocks.reshape(-1), stream[: n * SEQ])
    flat = blocks.reshape(-1)
    starts = np.flatnonzero(flat == ko_store.bos_id)
    assert starts[0] == 0 and np.all(flat[starts[1:] - 1] == ko_store.eos_id)  # BOS only right after EOS
    assert (flat == ko_store.eos_id).sum() >= ko_store.num_documents - 1  # only the cut-off tail lacks it
    assert not np.isin(flat, [0]).any()  # no <unk>/padding id
    assert packer.epoch == 1 and packer.tokens_seen == n * SEQ
    second = packer.next_batch(n)
    assert np.array_equal(second.reshape(-1), epoch_stream(ko_store, packer.main.order(1))[: n * SEQ])
    assert not np.array_equal(second, blocks)


def synthetic_store(lengths: list[int], bos: int | None) -> TokenStore:
    """A store held in memory: document d is ids 10+d, 10+d, ... (never a special id)."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.repeat(np.arange(10, 10 + len(lengths), dtype=np.uint16), lengths)
    manifest = {"format": {"vocab_size": 1000, "bos_id": bos, "eos_id": 2}, "key": {"tokenizer_sha256": "x"}}
    return TokenStore(Path("memory"), tokens, offsets, manifest)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    seq_len=st.integers(2, 50),
    world=st.integers(1, 3),
    bos=st.sampled_from([1, None]),
    seed=st.integers(0, 3),
)
def test_blocks_are_the_stream_for_any_lengths(
    lengths: list[int], seq_len: int, world: int, bos: int | None, seed: int
) -> None:
    store = synthetic_store(lengths, bos)
    stream_len = sum(lengths) + len(lengths) * (2 if bos else 1)
    if stream_len // seq_len < world:
        with pytest.raises(InputError, match="fewer than one per rank"):
            PackedBlocks(store, seq_len, seed, world_size=world)
        return
    packers = [PackedBlocks(store, seq_len, seed, rank=r, world_size=world) for r in range(world)]
    per_rank = packers[0].main.blocks_per_rank
    for epoch in range(2):
        stream = epoch_stream(store, packers[0].main.order(epoch))
        blocks = [p.next_batch(per_rank) for p in packers]
        for r in range(world):
            for i in range(per_rank):
                k = i * world + r
                assert np.array_equal(blocks[r][i], stream[k * seq_len : (k + 1) * seq_len])


def test_shuffle_is_deterministic_by_seed(ko_store: TokenStore) -> None:
    a, b, c = (PackedBlocks(ko_store, SEQ, seed=s).next_batch(16) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_without_bos_documents_are_only_eos_separated(ko_store: TokenStore) -> None:
    packer = PackedBlocks(ko_store, SEQ, add_bos=False)
    flat = packer.next_batch(packer.blocks_per_epoch).reshape(-1)
    assert ko_store.bos_id not in flat
    assert np.array_equal(flat, epoch_stream(ko_store, packer.main.order(0), bos=False)[: len(flat)])


def test_ranks_get_disjoint_blocks_that_cover_the_epoch(ko_store: TokenStore) -> None:
    world = 3
    single = PackedBlocks(ko_store, SEQ, seed=5)
    per_rank = single.blocks_per_epoch // world
    everything = single.next_batch(per_rank * world)
    for rank in range(world):
        mine = PackedBlocks(ko_store, SEQ, seed=5, rank=rank, world_size=world).next_batch(per_rank)
        assert np.array_equal(mine, everything[rank::world])


def test_replay_blocks_come_from_the_replay_store_at_the_ratio(
    ko_store: TokenStore, en_store: TokenStore
) -> None:
    ratio, n = 0.25, 203
    packer = PackedBlocks(ko_store, SEQ, seed=3, replay=en_store, replay_ratio=ratio, rank=1, world_size=2)
    batch = packer.next_batch(n)
    is_replay = np.array([packer.is_replay(i) for i in range(n)])
    assert is_replay.sum() == math.floor(n * ratio) == packer.replay_blocks_seen
    assert packer.replay_tokens_seen == is_replay.sum() * SEQ and packer.tokens_seen == n * SEQ
    main = PackedBlocks(ko_store, SEQ, seed=3, rank=1, world_size=2).next_batch(int((~is_replay).sum()))
    assert np.array_equal(batch[~is_replay], main)
    replay = BlockStream(en_store, SEQ, 3, 1, 1, 2, True)
    rows = np.empty((int(is_replay.sum()), SEQ), np.int64)
    for row in rows:
        replay.fill(row)
    assert np.array_equal(batch[is_replay], rows)
    # The replay text is English news: mostly Llama-2's own (Latin) ids, unlike the Korean blocks.
    assert (batch[is_replay] < 32000).mean() > 0.95 > (batch[~is_replay] < 32000).mean()


def test_state_dict_resumes_exactly_across_epochs(ko_store: TokenStore, en_store: TokenStore) -> None:
    def make() -> PackedBlocks:
        return PackedBlocks(ko_store, SEQ, seed=11, replay=en_store, replay_ratio=0.3, rank=0, world_size=2)

    packer = make()
    while packer.main.index < packer.main.blocks_per_rank - 3:  # the next batches cross an epoch boundary
        packer.next_batch(1)
    state = json.loads(json.dumps(packer.state_dict()))
    expected = [packer.next_batch(4) for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(state)
    assert all(np.array_equal(resumed.next_batch(4), e) for e in expected)
    assert resumed.state_dict() == packer.state_dict() and resumed.epoch == packer.epoch >= 1
    with pytest.raises(ConfigError, match="seq_len: saved 64, now 32"):
        other = PackedBlocks(ko_store, 32, seed=11, replay=en_store, replay_ratio=0.3, world_size=2)
        other.load_state_dict(state)


def test_packing_rejects_bad_settings(ko_store: TokenStore, en_store: TokenStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no replay store"):
        PackedBlocks(ko_store, SEQ, replay_ratio=0.1)
    with pytest.raises(ConfigError, match="rank 2 is not within world_size 2"):
        PackedBlocks(ko_store, SEQ, rank=2, world_size=2)
    with pytest.raises(InputError, match="fewer than one per rank"):
        PackedBlocks(en_store, en_store.num_tokens * 4)
    (tmp_path / "en.txt").write_text("Hello world, again and again.\n" * 10, encoding="utf-8")
    llama2 = DATA / "tokenizers" / "llama2_hf_json"
    other = build_token_store(TokenStoreConfig(sources=(tmp_path / "en.txt",), tokenizer=llama2,
                                               out_dir=tmp_path / "s", workers=1), progress=False)
    with pytest.raises(InputError, match="different tokenizer"):
        PackedBlocks(ko_store, SEQ, replay=other, replay_ratio=0.1)
    assert issubclass(ConfigError, KovocabError)

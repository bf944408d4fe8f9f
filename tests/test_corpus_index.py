"""Stage `shard`: a later batch deduplicated against an earlier corpus's kept dedup index
(keep_index, dedupe_against) keeps what one run over both corpora keeps of it."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
from test_corpus_engine import planted
from test_corpus_pipeline import NSMC

from kovocab.cli import main
from kovocab.corpus import ShardConfig, SourceConfig, shard_corpus, shard_local
from kovocab.corpus import engine as engine_mod
from kovocab.errors import ConfigError, InputError


def _texts(out: Path, source: str | None = None) -> list[str]:
    """Every kept text, train and eval shards."""
    rows = [json.loads(line) for p in sorted(out.glob("*.jsonl.gz")) for line in _gz_lines(p)]
    return [r["text"] for r in rows if source is None or r["source"] == source]


def _gz_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str], dict]:
    """Batch A: NSMC reviews 0-5,999 and 60 law paragraphs; batch B: reviews 3,000-8,999 (half
    of them A's) and a variant of each paragraph at Jaccard 0.9 or 0.8."""
    folder = tmp_path_factory.mktemp("batches")
    with lzma.open(NSMC, "rt", encoding="utf-8") as f:
        f.readline()
        reviews = [f.readline().rstrip("\n").split("\t")[-1] for _ in range(9_000)]
    docs, pairs = planted(30)
    originals = docs[: len(docs) // 2]
    (folder / "a.txt").write_text("\n".join(reviews[:6_000] + originals) + "\n", encoding="utf-8")
    variants = docs[len(docs) // 2 :]
    (folder / "b.txt").write_text("\n".join(reviews[3_000:] + variants) + "\n", encoding="utf-8")
    return folder / "a.txt", folder / "b.txt", docs, pairs


def _cfg(out: Path, *sources: tuple[str, Path], **kw: object) -> ShardConfig:
    return ShardConfig(sources=tuple(SourceConfig(name=n, paths=(str(p),)) for n, p in sources), out=out,
                       shards=2, near_dedupe=True, **kw)  # type: ignore[arg-type]


def test_a_later_batch_dedups_against_an_earlier_index_as_one_run_would(tmp_path, batches,
                                                                         monkeypatch) -> None:
    a, b, docs, pairs = batches
    # Several sorted runs per read task and several hash ranges per band, in both batches.
    monkeypatch.setattr(engine_mod, "RUN_DOCS", 1024)
    monkeypatch.setattr(engine_mod, "RANGE_ENTRIES", 2048)
    first = shard_local(_cfg(tmp_path / "A", ("a", a), keep_index=True, parts_per_file=2), workers=2)
    index = first.out / "dedup_index"
    meta = json.loads((index / "index.json").read_text())
    assert meta["documents"] == sum(p["kept"] for p in meta["parts"]) > 5_000
    assert "dedup_index/index.json" in json.loads((first.out / "manifest.json").read_text())["files"]

    # Batch B through the CLI: the serial default hands dedupe_against to the local engine.
    assert main(["shard", str(b), "--name", "b", "--out", str(tmp_path / "B"), "--shards", "2",
                 "--near-dedupe", "--dedupe-against", str(first.out), "--workers", "2"]) == 0
    later = tmp_path / "B"
    stats = json.loads((later / "manifest.json").read_text())["stats"]
    kinds = stats["duplicates_by_kind"]
    assert kinds["exact_earlier"] >= 2_900 and kinds["near_earlier"] >= 40, kinds
    assert stats["docs_in"] == 6_000 + len(docs) // 2
    assert stats["docs_in"] == stats["kept"] + stats["dropped"] + stats["duplicates"]

    # One serial run over A then B keeps the same documents of B.
    both = shard_corpus(_cfg(tmp_path / "AB", ("a", a), ("b", b)))
    kept_b = set(_texts(later))
    assert len(kept_b) == len(_texts(later)) == stats["kept"]
    assert kept_b == set(_texts(both.out, "b"))

    # Planted variants of A's paragraphs: >= 90% at the threshold, all at 0.9 (30 each: 2 sd).
    recall = {t: np.mean([docs[v] not in kept_b for _, v, _ in ps]) for t, ps in pairs.items()}
    assert recall[0.9] >= 0.96 and recall[0.8] >= 0.8, recall
    # Unchanged inputs and index: a rerun has nothing to do (engine.shard: what `kovocab run` calls).
    cfg_b = _cfg(later, ("b", b), dedupe_against=(first.out,))
    assert engine_mod.shard(cfg_b).already_done
    with pytest.raises(ConfigError, match="local engine"):  # the serial engine has no index files
        shard_corpus(cfg_b)


def test_dedupe_against_refuses_other_settings_a_folder_without_index_and_itself(tmp_path, batches) -> None:
    a, b, _, _ = batches
    first = shard_local(_cfg(tmp_path / "A", ("a", a), keep_index=True), workers=1)
    with pytest.raises(InputError, match=r"minhash_perms: 64 there, 128 here.*same values"):
        shard_local(_cfg(tmp_path / "B", ("b", b), minhash_perms=128, dedupe_against=(first.out,)))
    plain = shard_corpus(_cfg(tmp_path / "plain", ("a", a)))
    with pytest.raises(InputError, match=r"holds no dedup index .*keep_index: true"):
        shard_local(_cfg(tmp_path / "B", ("b", b), dedupe_against=(plain.out,)))
    with pytest.raises(InputError, match="this run's own output"):
        shard_local(_cfg(first.out, ("a", a), keep_index=True, dedupe_against=(first.out,)))
    assert not (tmp_path / "B").exists() or not any((tmp_path / "B").glob("*.parquet"))

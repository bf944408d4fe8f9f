"""`kovocab shard --engine local` (task stages on 2 worker processes) against the serial
engine on real NSMC reviews and formal Korean: the same bytes, every document accounted for,
a SIGKILLed run resumed to the same bytes, cluster stages, and near-dup recall on planted pairs."""

from __future__ import annotations

import json
import lzma
import os
import random
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from test_corpus_pipeline import _wait, digests, manifest_without_out, nsmc_head

from kovocab.cli import main
from kovocab.corpus import ShardConfig, SourceConfig, iter_shard_texts, shard_corpus, shard_local
from kovocab.corpus import engine as engine_mod
from kovocab.corpus.dedup import MinHasher, shingles
from kovocab.corpus.engine import shard_stage
from kovocab.corpus.near import (
    band_hashes,
    bucket_pairs,
    components,
    near_duplicates,
    sort_band,
    spanning_forest,
)
from kovocab.corpus.near_rule import near_rule, s_curve

FORMAL = DATA / "korean_formal"
GIMP = FORMAL / "gimp_help_ko" / "gimp_help_ko.txt.xz"
DEBIAN = FORMAL / "debian_install_guide_ko" / "debian_install_guide_ko.txt.xz"
KLUE_STS = DATA / "klue" / "klue-sts-v1.1_dev.json"


@pytest.fixture(scope="module")
def nsmc_5k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nsmc_head(tmp_path_factory.mktemp("data") / "nsmc_5k.tsv.gz", 5_000)


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory, nsmc_5k: Path) -> Path:
    """The serial engine's output: the reference."""
    return shard_corpus(config(tmp_path_factory.mktemp("serial") / "out", nsmc_5k)).out


def config(out: Path, nsmc: Path, **kw: object) -> ShardConfig:
    sources = (
        SourceConfig(name="nsmc", paths=(str(nsmc),), field="review", license="CC0-1.0"),
        SourceConfig(name="formal", paths=(str(GIMP), str(DEBIAN)), license="GPL-2"),
        SourceConfig(name="klue_sts", paths=(str(KLUE_STS),), field="sentence1", use="eval"),
    )
    return ShardConfig(sources=sources, out=out, shards=3, near_dedupe=True, **kw)  # type: ignore[arg-type]


def test_local_engine_keeps_what_serial_keeps_byte_for_byte(tmp_path, nsmc_5k, serial, monkeypatch) -> None:
    # Small runs and ranges, so several sorted runs per read task and several hash ranges per band.
    monkeypatch.setattr(engine_mod, "RUN_DOCS", 1024)
    monkeypatch.setattr(engine_mod, "RANGE_ENTRIES", 2048)
    local = shard_local(config(tmp_path / "local", nsmc_5k, parts_per_file=3), workers=2)
    assert digests(local.out) == digests(serial)
    assert manifest_without_out(local.out) == manifest_without_out(serial)
    s = json.loads((local.out / "manifest.json").read_text())["stats"]
    assert s["docs_in"] == 5_000 + 1_617 + 1_454 + 519 == s["kept"] + s["dropped"] + s["duplicates"]
    ranges = -(-(s["kept"] + s["duplicates"]) // 2048)  # documents that passed the filters
    assert ranges >= 3 and local.stages["dedup"]["tasks"] == ranges * (1 + near_rule(0.8, 64).bands)
    assert local.stages["read"]["tasks"] == 3 * 4 and local.stages["write"]["tasks"] == 4  # 3 parts each
    assert s["duplicates_by_kind"]["near"] > 0 and s["duplicates_by_kind"]["exact"] > 0
    for name, src in s["sources"].items():
        accounted = src["kept"] + sum(src["dropped"].values()) + sum(src["duplicates"].values())
        assert src["docs_in"] == accounted, name
    # A finished folder is complete for either engine.
    assert shard_corpus(config(tmp_path / "local", nsmc_5k)).already_done


def test_cluster_stages_then_finish_give_the_same_bytes(tmp_path, nsmc_5k, serial) -> None:
    reviews = tmp_path / nsmc_5k.name  # a copy: changed below
    reviews.write_bytes(nsmc_5k.read_bytes())
    cfg = config(tmp_path / "array", reviews, parts_per_file=2)
    ran = {stage: [shard_stage(cfg, stage, i, 2) for i in range(2)] for stage in ("read", "dedup", "write")}
    assert sum(ran["read"]) == 4 * 2 and sum(ran["write"]) == 4
    # The driver finds every task done and only writes quarantine.jsonl and the manifest.
    assert main(["shard", "--engine", "local", "--out", str(cfg.out), "-q", "--recipe",
                 str(_recipe(tmp_path, cfg))]) == 0
    assert digests(cfg.out) == digests(serial)
    assert shard_stage(cfg, "read", 0, 2) == 0  # complete: nothing to do
    nsmc_head(reviews, 1_000)  # the same config over a changed file: its read tasks run again
    assert shard_stage(cfg, "read", 0, 2) + shard_stage(cfg, "read", 1, 2) == 4 * 2  # .work was removed
    with pytest.raises(Exception, match="stage read is not complete"):
        other = config(tmp_path / "half", nsmc_5k)
        shard_stage(other, "dedup", 0, 1)


def _recipe(tmp_path: Path, cfg: ShardConfig) -> Path:
    import yaml

    from kovocab.config import to_dict

    section = to_dict(cfg)
    section["out"] = str(cfg.out)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"shard": section}, allow_unicode=True), encoding="utf-8")
    return path


def test_sigkilled_local_engine_resumes_to_identical_bytes(tmp_path, nsmc_5k, serial) -> None:
    cfg = config(tmp_path / "out", nsmc_5k, parts_per_file=3)
    cmd = [sys.executable, "-m", "kovocab", "shard", "--engine", "local", "--workers", "2", "-q",
           "--recipe", str(_recipe(tmp_path, cfg))]
    out, work = cfg.out, cfg.out / ".work"
    # Killed (driver and workers: the whole process group) after the first read task finished,
    # then again once the first shard is written, if the rerun gets that far.
    for done in ("*.read.json", "*-shard-*.json"):
        proc = subprocess.Popen(cmd, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        caught = _wait(lambda pattern=done: list(work.glob(pattern)), proc, timeout_s=120)
        if caught:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not caught:
            break
        assert not (out / "manifest.json").exists()
    assert main(["shard", "--engine", "local", "--workers", "2", "-q", "--recipe",
                 str(_recipe(tmp_path, cfg))]) == 0
    assert digests(out) == digests(serial)
    assert not work.exists() and not list(out.glob(".*.tmp"))


def _variant(text: str, target: float, rng: random.Random, width: int = 5) -> tuple[str, float] | None:
    """`text` with Hangul syllables substituted (the fewest, in a random order) until the
    Jaccard similarity of the character shingle sets is within 0.015 of `target` (else None)."""
    base = set(shingles(text, width))
    order = rng.sample(range(len(text)), len(text))
    subs = [chr(rng.randrange(0xAC00, 0xD7A4)) for _ in order]

    def changed(k: int) -> tuple[str, float]:
        chars = list(text)
        for pos, ch in zip(order[:k], subs[:k], strict=True):
            chars[pos] = ch
        other = set(shingles("".join(chars), width))
        return "".join(chars), len(base & other) / len(base | other)

    lo, hi = 0, len(text)  # similarity falls as k grows: find the first k at or below target + 0.015
    while lo < hi:
        mid = (lo + hi) // 2
        if changed(mid)[1] <= target + 0.015:
            hi = mid
        else:
            lo = mid + 1
    result = changed(lo)
    return result if abs(result[1] - target) <= 0.015 else None


def planted(n: int, seed: int = 0) -> tuple[list[str], dict[float, list[tuple[int, int, float]]]]:
    """Formal paragraphs (statutes) of 300-1000 characters, and for each a copy at Jaccard 0.9
    or 0.8: (original index, variant index, measured Jaccard)."""
    paras = []
    with lzma.open(FORMAL / "ko_laws_legalize" / "ko_laws_legalize.txt.xz", "rt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if 300 <= len(line) <= 1000 and unicodedata.is_normalized("NFC", line):
                paras.append(line)
            if len(paras) == 3 * n:
                break
    # Statutes repeat themselves: keep paragraphs not similar (0.5) to an earlier one.
    similar = set(near_duplicates(MinHasher(64, 5).signatures(paras), np.arange(len(paras), dtype=np.uint64),
                                  0.5).tolist())
    paras = [p for i, p in enumerate(paras) if i not in similar][: 2 * n]
    assert len(paras) == 2 * n
    rng = random.Random(seed)
    docs = list(paras)
    pairs: dict[float, list[tuple[int, int, float]]] = {0.9: [], 0.8: []}
    for i, text in enumerate(paras):
        target = 0.9 if i % 2 == 0 else 0.8
        while (v := _variant(text, target, rng)) is None:
            pass
        pairs[target].append((i, len(docs), v[1]))
        docs.append(v[0])
    return docs, pairs


def test_near_dup_recall_on_planted_pairs_at_0_9_and_0_8(tmp_path) -> None:
    docs, pairs = planted(100)
    short = ["정말 최고의 영화였어요", "정말 최고의 영화였어요!"]  # 12 characters: one shingle apart
    (tmp_path / "in.txt").write_text("\n".join(docs + short) + "\n", encoding="utf-8")
    cfg = ShardConfig(sources=(SourceConfig(name="laws", paths=(str(tmp_path / "in.txt"),)),),
                      out=tmp_path / "out", shards=1, eval_permille=0, near_dedupe=True)
    res = shard_local(cfg, workers=2)
    kept = set(iter_shard_texts(res.out))
    assert all(docs[i] in kept for i in range(len(docs) // 2))  # no original is dropped
    recall = {t: np.mean([docs[v] not in kept for _, v, _ in ps]) for t, ps in pairs.items()}
    assert recall[0.9] >= 0.97, recall
    # near_recall 0.9: >= 90% of pairs at exactly the threshold are dropped (100 pairs: allow 2 sd).
    assert recall[0.8] >= 0.84, recall
    assert short[0] in kept and short[1] not in kept  # short documents are deduplicated too

    # The S-curve: the share of planted pairs that become candidates (share a band) before
    # verification, against 1 - (1 - s^r)^b at their measured similarity.
    sigs = MinHasher(64, 5).signatures(docs)
    ids = np.arange(len(docs), dtype=np.uint64)
    rule = near_rule(0.8, 64)
    hashes = band_hashes(sigs, rule.bands, rule.rows)
    candidates = set()
    for b in range(rule.bands):
        a, c = bucket_pairs(sort_band(hashes[:, b], ids), lambda which: sigs[which.astype(np.int64)])
        candidates |= set(zip(a.tolist(), c.tolist(), strict=True))
    for t, ps in pairs.items():
        measured = np.mean([(i, v) in candidates for i, v, _ in ps])
        expected = np.mean([s_curve(j, rule.bands, rule.rows) for _, _, j in ps])
        assert measured >= 0.9 and abs(measured - expected) < 0.1, (t, measured, expected)
    # A stricter rule (threshold 0.9) keeps most pairs at 0.8, as its S-curve says (in memory:
    # the same functions as the engines).
    dropped = set(near_duplicates(sigs, ids, 0.9).tolist())
    share = np.mean([v in dropped for _, v, _ in pairs[0.8]])
    expected = np.mean([near_rule(0.9, 64).dropped(j) for _, _, j in pairs[0.8]])
    assert share <= 0.4 and abs(share - expected) <= 0.12, (share, expected)
    assert not dropped & set(range(len(docs) // 2))


@pytest.mark.parametrize("threshold, perms", [(0.8, 64), (0.7, 128)])
def test_near_rule_s_curve_is_what_near_duplicates_drops(threshold, perms) -> None:
    """The share of pairs dropped at each similarity, stated by near_rule (>= near_recall at the
    threshold), against near_duplicates on 3,000 simulated pairs per similarity (each MinHash
    value of the copy agrees with probability s, as it does for shingle sets of Jaccard s)."""
    rule = near_rule(threshold, perms)
    assert rule.dropped(threshold) >= rule.recall == 0.9
    rng = np.random.default_rng(7)
    n = 3000
    for s in (threshold - 0.2, threshold - 0.1, threshold, threshold + 0.1):
        a = rng.integers(0, 2**32, size=(n, perms), dtype=np.uint32)
        b = np.where(rng.random((n, perms)) < s, a, rng.integers(0, 2**32, size=(n, perms), dtype=np.uint32))
        sigs = np.empty((2 * n, perms), dtype=np.uint32)
        sigs[0::2], sigs[1::2] = a, b
        dropped = near_duplicates(sigs, np.arange(2 * n, dtype=np.uint64), threshold)
        share = len(dropped) / n
        assert np.all(dropped % 2 == 1)  # only copies, never the first of a pair
        # a lower bound (a candidate agrees on a whole band), tight within a few points
        assert rule.dropped(s) - 0.03 <= share <= rule.dropped(s) + 0.06, (s, share, rule.dropped(s))


def test_union_find_of_task_forests_folded_in_batches_keeps_every_component(tmp_path) -> None:
    """Dedup tasks write spanning forests and the driver folds them in batches: the groups
    must be those of all the pairs at once, whatever the batch size."""
    rng = np.random.default_rng(3)
    files, every_a, every_b = [], [], []
    for k in range(20):
        a, b = rng.integers(0, 3000, size=(2, 150)).astype(np.uint64)
        lo, hi = np.minimum(a, b)[a != b], np.maximum(a, b)[a != b]
        forest = spanning_forest(lo, hi)
        assert len(forest) < len(np.unique(np.concatenate([lo, hi])))  # one edge per id but the roots
        np.save(tmp_path / f"{k}.npy", forest)
        files.append(tmp_path / f"{k}.npy")
        every_a.append(lo)
        every_b.append(hi)
    expected = components(np.concatenate(every_a), np.concatenate(every_b))
    assert 500 < len(expected) < 2900
    for batch in (1, 400, 1 << 22):
        forest = engine_mod._union_find(files, batch)
        assert np.array_equal(components(forest[:, 0], forest[:, 1]), expected), batch

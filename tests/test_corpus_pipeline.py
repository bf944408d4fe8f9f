"""`kovocab shard` end to end on real corpora: the output contract, accounting, determinism,
no-op reruns, cluster tasks and a SIGKILLed run resumed to the same bytes."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DATA, ROOT

from kovocab.cli import main
from kovocab.config import read_recipe
from kovocab.corpus import (
    ShardConfig,
    SourceConfig,
    iter_shard_texts,
    load_shard_config,
    shard_corpus,
    shard_tasks,
)
from kovocab.corpus.inputs import probe

NSMC = DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz"
NOVELS = str(DATA / "koconovel" / "text" / "*.text.jsonl")
KLUE_STS = str(DATA / "klue" / "klue-sts-v1.1_dev.json")


def nsmc_head(path: Path, lines: int) -> Path:
    """The first `lines` reviews of NSMC (plus header), gzip-compressed."""
    with lzma.open(NSMC, "rb") as f, gzip.open(path, "wb", compresslevel=1) as out:
        for _ in range(lines + 1):
            out.write(f.readline())
    return path


@pytest.fixture(scope="module")
def nsmc_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nsmc_head(tmp_path_factory.mktemp("data") / "nsmc_20k.tsv.gz", 20_000)


def config(out: Path, nsmc: Path, **kw: object) -> ShardConfig:
    sources = (
        SourceConfig(name="nsmc", paths=(str(nsmc),), field="review", license="CC0-1.0"),
        SourceConfig(name="novels", paths=(NOVELS,), license="CC-BY-SA-4.0"),
        SourceConfig(name="klue_sts", paths=(KLUE_STS,), field="sentence1", use="eval"),
    )
    return ShardConfig(sources=sources, out=out, shards=3, **kw)  # type: ignore[arg-type]


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in ("config.yaml", "manifest.json")  # these name the folder
    }


def manifest_without_out(folder: Path) -> dict:
    """The manifest less what names the folder or how the work was split."""
    m = json.loads((folder / "manifest.json").read_text())
    m["config"].pop("out")
    m["config"].pop("parts_per_file")
    m["files"].pop("config.yaml")
    return m


def test_output_contract_and_accounting(tmp_path, nsmc_20k) -> None:
    res = shard_corpus(config(tmp_path / "out", nsmc_20k))
    out = res.out
    names = {p.name for p in out.iterdir()}
    train = [f"train-0000{i}-of-00003" for i in range(3)]
    expected = {"manifest.json", "config.yaml", "quarantine.jsonl"}
    expected |= {f"{n}.{ext}" for n in [*train, "eval-00000-of-00001"] for ext in ("jsonl.gz", "parquet")}
    assert names == expected
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"] == {
        "train": [f"{n}.jsonl.gz" for n in train],
        "eval": ["eval-00000-of-00001.jsonl.gz"],
    }

    s = m["stats"]
    assert s["docs_in"] == s["kept"] + s["dropped"] + s["duplicates"]
    assert s["docs_in"] == sum(i["records"] for i in m["inputs"]) == 20_000 + 873 + 519
    assert (
        s["dropped"] == sum(s["dropped_by_reason"].values())
        and s["duplicates"] == s["duplicates_by_kind"]["exact"]
    )
    for name, src in s["sources"].items():
        assert src["docs_in"] == src["kept"] + sum(src["dropped"].values()) + sum(
            src["duplicates"].values()
        ), name
    assert s["sources"]["nsmc"]["license"] == "CC0-1.0" and s["sources"]["klue_sts"]["use"] == "eval"
    assert all(len(i["sha256"]) == 64 for i in m["inputs"])

    ids: set[str] = set()
    docs = 0
    for split, files in m["splits"].items():
        for name in files:
            stem = name.removesuffix(".jsonl.gz")
            raw = (out / name).read_bytes()
            assert raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0"  # gzip: no file name, mtime 0
            lines = gzip.decompress(raw).decode("utf-8").splitlines(keepends=True)
            rows = [json.loads(line) for line in lines]
            for row, line in zip(rows, lines, strict=True):
                assert list(row) == ["id", "source", "text"]
                assert json.dumps(row, ensure_ascii=False) + "\n" == line
                assert (row["source"] == "klue_sts") <= (split == "eval")  # eval sources never train
            assert pq.read_table(out / f"{stem}.parquet").to_pylist() == rows  # same documents
            assert m["shards"][stem]["docs"] == len(rows)
            assert m["files"][name]["sha256"] == hashlib.sha256(raw).hexdigest()
            ids |= {r["id"] for r in rows}
            docs += len(rows)
    assert docs == len(ids) == s["kept"] == s["train_docs"] + s["eval_docs"]
    assert s["sources"]["klue_sts"]["kept"] <= s["eval_docs"]
    assert list(iter_shard_texts(out, "train"))[:3] == [
        json.loads(x)["text"]
        for x in gzip.decompress((out / m["splits"]["train"][0]).read_bytes()).decode().splitlines()[:3]
    ]
    assert res.kept == s["kept"] and not res.already_done


def test_workers_tasks_and_reruns_give_identical_bytes(tmp_path, nsmc_20k) -> None:
    one = shard_corpus(config(tmp_path / "one", nsmc_20k))
    two = shard_corpus(config(tmp_path / "two", nsmc_20k, parts_per_file=3), workers=2)
    assert digests(one.out) == digests(two.out)
    assert manifest_without_out(one.out) == manifest_without_out(two.out)

    # A cluster: three array tasks, then the merge.
    cfg = config(tmp_path / "array", nsmc_20k, parts_per_file=2)
    ran = [shard_tasks(cfg, i, 3) for i in range(3)]
    assert sum(ran) == 2 * len(probe(cfg))  # two parts per input, shared among the array tasks
    merged = shard_corpus(cfg)
    assert merged.tasks_run == 0 and digests(merged.out) == digests(one.out)
    assert shard_tasks(cfg, 1, 3) == 0  # an array task resubmitted after the merge does nothing

    # A finished run is a no-op: nothing is rewritten.
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in one.out.iterdir()}
    again = shard_corpus(config(tmp_path / "one", nsmc_20k))
    assert again.already_done and again.kept == one.kept
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in one.out.iterdir()} == before


def _wait(predicate: Callable[[], object], proc: subprocess.Popen, timeout_s: float = 60) -> bool:
    """Poll until predicate() is true (True) or the process ends first (False)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise TimeoutError("the shard run neither progressed nor finished")


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_bytes(tmp_path) -> None:
    data = nsmc_head(tmp_path / "nsmc.tsv.gz", 120_000)
    args = ["shard", str(data), "--field", "review", "--set", "shard.parts_per_file=4"]
    cmd = [sys.executable, "-m", "kovocab", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*cmd, "--out", str(tmp_path / "ref"), "-q"], check=True, env=env, capture_output=True)
    out = tmp_path / "out"

    # Killed in phase 1, right after its first task finished.
    proc = subprocess.Popen([*cmd, "--out", str(out), "-q"], env=env)
    assert _wait(lambda: list((out / ".work").glob("*.done.json")), proc), "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "manifest.json").exists()

    # Resumed (the finished task is not run again), then killed in phase 2 if caught there.
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    if _wait(lambda: list(out.glob(".train-*.tmp")), proc):
        proc.send_signal(signal.SIGKILL)
    _, log = proc.communicate()
    assert "phase 1: 3 tasks" in log or "phase 1: 2 tasks" in log, log

    # Finished: the same bytes as the run nobody interrupted, and no leftovers.
    assert main([*args, "--out", str(out), "-q"]) == 0
    assert digests(out) == digests(tmp_path / "ref")
    assert not (out / ".work").exists() and not list(out.glob(".*.tmp"))


def test_recipes_name_license_and_use_and_resolve_their_paths() -> None:
    recipes = sorted((ROOT / "corpora").glob("*.yaml"))
    assert {r.stem for r in recipes} >= {"nsmc", "koconovel", "klue", "kobest", "konlpy_law", "nsmc_novels",
                                         "korean_formal", "korean_mix"}
    for recipe in recipes:
        cfg = load_shard_config(
            {**read_recipe(recipe), "shard": {**read_recipe(recipe)["shard"], "out": "x"}}
        )
        for src in cfg.sources:
            assert src.license != "unspecified", (recipe.name, src.name)
            # The news dev split and JHE eval sentences are held-out text (korean_formal.yaml).
            held_out = recipe.stem in ("klue", "kobest") or src.name == "korean_english_news_dev_jhe"
            assert src.use == ("eval" if held_out else "train"), (recipe.name, src.name)
        assert probe(cfg), recipe.name  # every path exists and every column/field is there


def test_help_lists_the_config_keys(capsys) -> None:
    assert main(["shard", "--help"]) == 0
    out = capsys.readouterr().out
    for key in (
        "min_hangul_ratio",
        "near_dedupe",
        "split_sentences",
        "eval_permille",
        "txt_mode",
        "--num-tasks",
    ):
        assert key in out


KOLAW = DATA / "konlpy_corpus" / "kolaw" / "constitution.txt"


def test_shard_refuses_out_holding_user_files_and_its_own_input(tmp_path, capsys) -> None:
    """The campaign case: `--out` is the folder holding the input and the user's notes.
    Names that only start like kovocab's (train-, eval-, config.yaml, manifest.json) are not ours."""
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {
        "train-raw.txt": KOLAW.read_bytes(),  # the input itself: real Korean text
        "eval-plan.md": "# 평가 계획\n- KoBEST 5-shot\n".encode(),
        "config.yaml.bak": b"shard:\n  shards: 8\n",
        "manifest.json.orig": b'{"stage": "shard", "files": {}}\n',
    }
    for name, data in files.items():
        (mine / name).write_bytes(data)
    code = main(["shard", str(mine / "train-raw.txt"), "--out", str(mine), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "kovocab: error: shard.out:" in err and "did not write" in err
    assert all(name in err for name in files), err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == files  # byte-identical, nothing added


def test_shard_reruns_into_its_own_killed_folder(tmp_path, caplog) -> None:
    """A folder left by a run killed in phase 2 (no manifest, a temporary, a stale lock) is
    kovocab's own: the rerun finishes it; a finished folder is a no-op."""
    cfg = ShardConfig(sources=(SourceConfig(name="kolaw", paths=(str(KOLAW),), txt_mode="paragraph"),),
                      out=tmp_path / "out", shards=2)
    ref = shard_corpus(cfg)
    expected = digests(ref.out)
    (ref.out / "manifest.json").unlink()
    (ref.out / ".train-00000-of-00002.jsonl.gz.ab12cd34.tmp").write_bytes(b"half")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (ref.out / ".kovocab.lock").write_text(f"{dead} {os.uname().nodename}\n")
    with caplog.at_level("WARNING", logger="kovocab.artifacts"):
        again = shard_corpus(cfg)
    assert not again.already_done and digests(again.out) == expected
    assert f"taking over the lock of pid {dead}" in caplog.text
    assert sorted(p.name for p in again.out.iterdir() if p.name.startswith(".")) == []
    assert shard_corpus(cfg).already_done

"""A new batch deduplicated against an earlier corpus's index (`keep_index`, `dedupe_against`),
side by side with the same batch alone and with one run over both corpora, in one run.

    .venv/bin/python bench/dedup_index_bench.py [--out runs/bench-dedup-index] [--workers 2]

Batch A: the first half of NSMC's reviews plus korean_formal's laws and precedents; batch B:
the second half of NSMC plus korean_formal's other sources, and a copy of A's first 50,000
reviews (so B holds known exact duplicates of A). Plain UTF-8 TSV/text inputs (no codec
cost), near-dedupe on, `--engine local`. Reports per run wall and CPU seconds (process
tree), the dedup stage's peak RSS per worker, kept / duplicates by kind, the index's size
on disk, and whether B against A keeps exactly what the one run over A and B keeps of B.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchdata import DATA

ROOT = Path(__file__).resolve().parents[1]
NSMC = DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz"
A_FORMAL = ("ko_laws_legalize", "ko_precedents_legalize")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

RUN = """
import json, sys
from kovocab.config import read_recipe
from kovocab.corpus import load_shard_config
from kovocab.corpus.engine import shard_local
res = shard_local(load_shard_config(read_recipe(sys.argv[1])), int(sys.argv[2]))
print(json.dumps({"stages": res.stages}))
"""


def make_inputs(folder: Path) -> None:
    if (folder / "done").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
    with lzma.open(NSMC, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    header, reviews = lines[0], lines[1:]
    half = len(reviews) // 2
    (folder / "a" / "nsmc.tsv").write_bytes(header + b"".join(reviews[:half]))
    (folder / "b" / "nsmc.tsv").write_bytes(header + b"".join(reviews[half:]))
    (folder / "b" / "nsmc_copy.tsv").write_bytes(header + b"".join(reviews[:50_000]))
    for src in sorted((DATA / "korean_formal").glob("*/*.txt.xz")):
        with lzma.open(src, "rb") as f:
            batch = "a" if src.parent.name in A_FORMAL else "b"
            (folder / batch / src.name.removesuffix(".xz")).write_bytes(f.read())
    (folder / "done").write_text("")


def sources(folder: Path, name: str) -> list[dict[str, object]]:
    return [{"name": f"{name}_reviews", "paths": [str(folder / name / "*.tsv")], "field": "review"},
            {"name": f"{name}_formal", "paths": [str(folder / name / "*.txt")]}]


def run(out: Path, srcs: list[dict[str, object]], workers: int, **extra: object) -> dict[str, object]:
    shutil.rmtree(out, ignore_errors=True)
    recipe = out.with_suffix(".json")
    recipe.write_text(json.dumps({"shard": {"sources": srcs, "out": str(out), "near_dedupe": True, **extra}}))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(recipe), str(workers)], cwd=ROOT,
                            stdout=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None
    printed = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"run failed: {recipe}")
    stages = json.loads(printed.decode().strip().splitlines()[-1])["stages"]
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    index = out / "dedup_index"
    index_bytes = sum(p.stat().st_size for p in index.iterdir()) if index.is_dir() else 0
    return {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "dedup_peak_mb": stages["dedup"]["peak_rss_mb_per_worker"], "kept": stats["kept"],
            "duplicates": stats["duplicates_by_kind"],
            "index_mb": round(index_bytes / 1e6, 1)}


def texts(out: Path, prefix: str) -> set[str]:
    found = set()
    for path in out.glob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            found.update(r["text"] for r in map(json.loads, f) if r["source"].startswith(prefix))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-dedup-index")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data = args.out / "data"
    make_inputs(data)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = {
        "A, keep_index": run(args.out / "A", sources(data, "a"), args.workers, keep_index=True),
        "B alone": run(args.out / "B0", sources(data, "b"), args.workers),
        "B against A": run(args.out / "B", sources(data, "b"), args.workers,
                           dedupe_against=[str(args.out / "A")]),
        "A and B in one run": run(args.out / "AB", sources(data, "a") + sources(data, "b"), args.workers),
    }
    for name, r in rows.items():
        print(f"{name:>20}: wall {r['wall_s']:6.1f} s  cpu {r['cpu_s']:6.1f} s  dedup peak "
              f"{r['dedup_peak_mb']:.0f} MB per worker  kept {r['kept']:,}  duplicates {r['duplicates']}  "
              f"index {r['index_mb']} MB", flush=True)
    same = texts(args.out / "B", "b_") == texts(args.out / "AB", "b_")
    print(f"B against A keeps what the one run over A and B keeps of B: {same}")
    result = {"rows": rows, "same_as_one_run": same}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

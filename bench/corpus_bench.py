"""Throughput of `kovocab shard` (the whole pipeline, a fresh process per run) on NSMC.

    .venv/bin/python bench/corpus_bench.py [--out runs/bench-corpus] [--subset 20000]

Four configurations: plain, +near-dedupe, +Kiwi sentence split, +both. Plain and
near-dedupe run on all of NSMC (712,404 reviews, 80.8 MB uncompressed, xz on disk);
the Kiwi configurations run on the first --subset reviews (Kiwi analyses ~1k
reviews/s/core, so all of NSMC would take ~10 minutes each). MB/s per core is
uncompressed input MB / (wall seconds x workers); CPU seconds are the children's
user + system time, reported beside it because the 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NSMC = ROOT.parent / "shared" / "data" / "nsmc" / "nsmc_raw_reviews.tsv.xz"
FLOOR_MB_S = 10.0
# Bytecode caching on, as in any normal install (this machine sets PYTHONDONTWRITEBYTECODE,
# which makes every run recompile kovocab's modules first).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def subset(path: Path, reviews: int) -> Path:
    """The first `reviews` NSMC reviews (plus header), xz like the original."""
    with lzma.open(NSMC, "rb") as f, lzma.open(path, "wb", preset=1) as out:
        for _ in range(reviews + 1):
            out.write(f.readline())
    return path


def uncompressed_bytes(path: Path) -> int:
    n = 0
    with lzma.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


def run(name: str, data: Path, out: Path, workers: int, sets: list[str]) -> dict[str, object]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "kovocab",
        "shard",
        str(data),
        "--field",
        "review",
        "--out",
        str(out),
        "--workers",
        str(workers),
        "-q",
    ]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, env=ENV)
    # wait4: this run's own CPU time (its worker processes included) and peak memory.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{name}: kovocab shard failed ({proc.returncode}): {' '.join(cmd)}")
    cpu = usage.ru_utime + usage.ru_stime
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    mb = uncompressed_bytes(data) / 1e6
    row = {
        "config": name,
        "input": data.name,
        "reviews": stats["docs_in"],
        "mb": round(mb, 1),
        "workers": workers,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "mb_s_per_core": round(mb / (wall * workers), 2),
        "mb_per_cpu_s": round(mb / cpu, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024),
        "kept": stats["kept"],
        "duplicates": stats["duplicates_by_kind"],
    }
    print(
        f"{name:>12} w={workers} {row['reviews']:>7} reviews {mb:6.1f} MB  wall {wall:6.1f} s  "
        f"cpu {cpu:6.1f} s  {row['mb_s_per_core']:5.1f} MB/s/core  {row['mb_per_cpu_s']:5.1f} MB/cpu-s  "
        f"peak {row['max_rss_mb']} MB",
        flush=True,
    )
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-corpus")
    ap.add_argument("--subset", type=int, default=20_000, help="reviews for the Kiwi configurations")
    ap.add_argument("--quick", action="store_true", help="plain only (workers 1 and 2)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "kovocab", "shard", "--help"], env=ENV, stdout=subprocess.DEVNULL, check=True
    )
    small = subset(args.out / f"nsmc_{args.subset}.tsv.xz", args.subset)
    near, kiwi = "shard.near_dedupe=true", "shard.split_sentences=true"
    plan: list[tuple[str, Path, int, list[str]]] = [("plain", NSMC, 1, []), ("plain", NSMC, 2, [])]
    if not args.quick:
        plan += [
            ("near-dedupe", NSMC, 1, [near]),
            ("plain", small, 1, []),
            ("near-dedupe", small, 1, [near]),
            ("kiwi", small, 1, [kiwi]),
            ("kiwi+near", small, 1, [kiwi, near]),
        ]
    rows = [run(name, data, args.out / "shards", w, sets) for name, data, w, sets in plan]
    plain = rows[0]
    verdict = "meets" if float(plain["mb_s_per_core"]) >= FLOOR_MB_S else "MISSES"  # type: ignore[arg-type]
    print(f"\nplain, 1 worker: {plain['mb_s_per_core']} MB/s per core: {verdict} the {FLOOR_MB_S} MB/s floor")
    (args.out / "results.json").write_text(
        json.dumps({"rows": rows, "floor_mb_s": FLOOR_MB_S}, indent=2) + "\n"
    )
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

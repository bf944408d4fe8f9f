"""`kovocab shard` with near-dedupe at 0.25x, 0.5x, 1x and 2x NSMC: engine serial (the
one-process reference) and engine local on 1 and 2 workers, side by side in one run
(`--runs local:2,datatrove:2`: the local engine's tasks on datatrove's LocalPipelineExecutor).

    .venv/bin/python bench/corpus_scale_bench.py [--out runs/bench-corpus-scale] [--scales 0.25,0.5,1,2]

Inputs are plain UTF-8 (no codec cost): NSMC's first 0.25/0.5/1 x 712,404 reviews split
round-robin into 8 TSV files; 2x is all of NSMC (8 files) plus korean_formal (13 text files,
130 MB). Every run is a fresh process; CPU seconds are the process tree's (wait4), MB is the
uncompressed input. Per stage the local engine reports the peak RSS of one worker during its
tasks (VmHWM, reset before each task). Floors (issue 19): near-dedup peak per worker flat
within 1.5x from 0.25x to 2x; local per-core speed within 2x of serial; 2 workers >= 1.7x.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchdata import DATA

ROOT = Path(__file__).resolve().parents[1]
NSMC = DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz"
NSMC_REVIEWS = 712_404
FILES = 8
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

RUN = """
import json, sys, logging
from kovocab.corpus import load_shard_config, shard_corpus, shard_local
from kovocab.config import read_recipe
cfg = load_shard_config(read_recipe(sys.argv[1]))
engine, workers = sys.argv[2], int(sys.argv[3])
if engine == "datatrove":
    from kovocab.corpus.on_datatrove import shard_datatrove
    res = shard_datatrove(cfg, workers)
else:
    res = shard_local(cfg, workers) if engine == "local" else shard_corpus(cfg, workers, progress=False)
print(json.dumps({"kept": res.kept, "duplicates": res.duplicates, "stages": res.stages}))
"""


def make_inputs(out: Path, scale: float) -> tuple[list[dict[str, object]], int]:
    """Sources for one scale (written once) and their uncompressed bytes."""
    folder = out / f"data-{scale}"
    nsmc_reviews = NSMC_REVIEWS if scale >= 1 else int(NSMC_REVIEWS * scale)
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        files = [open(folder / f"nsmc-{k}.tsv", "wb") for k in range(FILES)]
        with lzma.open(NSMC, "rb") as f:
            header = f.readline()
            for g in files:
                g.write(header)
            for i in range(nsmc_reviews):
                files[i % FILES].write(f.readline())
        for g in files:
            g.close()
        if scale > 1:
            for src in sorted((DATA / "korean_formal").glob("*/*.txt.xz")):
                with lzma.open(src, "rb") as f:
                    (folder / src.name.removesuffix(".xz")).write_bytes(f.read())
        (folder / "done").write_text("")
    sources: list[dict[str, object]] = [
        {"name": "nsmc", "paths": [str(folder / "nsmc-*.tsv")], "field": "review", "license": "CC0-1.0"}]
    if scale > 1:
        sources.append({"name": "formal", "paths": [str(folder / "*.txt")], "license": "various"})
    size = sum(p.stat().st_size for p in folder.iterdir() if p.name != "done")
    return sources, size


def run(recipe: Path, engine: str, workers: int, mb: float) -> dict[str, object]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(recipe), engine, str(workers)], cwd=ROOT,
                            stdout=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{engine} x{workers} failed: {recipe}")
    cpu = usage.ru_utime + usage.ru_stime
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {"engine": engine, "workers": workers, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "mb_per_cpu_s": round(mb / cpu, 2), "max_rss_mb": round(usage.ru_maxrss / 1024),
            "kept": result["kept"], "duplicates": result["duplicates"], "stages": result["stages"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-corpus-scale")
    ap.add_argument("--scales", default="0.25,0.5,1,2")
    ap.add_argument("--runs", default="serial:1,local:1,local:2",
                    help="engine:workers, comma-separated, in this order (repeat local:1,local:2 for "
                    "medians)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for scale in [float(s) for s in args.scales.split(",")]:
        sources, size = make_inputs(args.out, scale)
        mb = size / 1e6
        for spec in args.runs.split(","):
            engine, workers = spec.split(":")
            shards = args.out / "shards"
            shutil.rmtree(shards, ignore_errors=True)
            shutil.rmtree(f"{shards}.datatrove", ignore_errors=True)  # datatrove's logs and completions
            recipe = args.out / "recipe.yaml"
            recipe.write_text(json.dumps({"shard": {"sources": sources, "out": str(shards),
                                                    "near_dedupe": True}}), encoding="utf-8")
            row = {"scale": scale, "mb": round(mb, 1), **run(recipe, engine, int(workers), mb),
                   "load": round(os.getloadavg()[0], 1)}
            rows.append(row)
            st = row["stages"]
            mem = (" / ".join(f"{k} {st[k]['peak_rss_mb_per_worker']:.0f} (+{st[k]['task_growth_mb']:.0f})"
                              for k in ("read", "dedup", "write"))
                   + f" MB per worker, driver {st['driver_peak_rss_mb']:.0f}"
                   if "driver_peak_rss_mb" in st else f"peak {row['max_rss_mb']} MB")
            if engine == "datatrove":
                mem += " | wall s " + " / ".join(f"{k} {v['wall_s']:.1f}" for k, v in st.items())
            print(f"{scale:>4}x {mb:6.1f} MB {engine:>9} w={workers}  wall {row['wall_s']:7.1f} s  cpu "
                  f"{row['cpu_s']:7.1f} s  {row['mb_per_cpu_s']:5.2f} MB/cpu-s  kept {row['kept']}  dups "
                  f"{row['duplicates']}  {mem}  (load {row['load']})", flush=True)
    for scale in sorted({r["scale"] for r in rows}):
        same = {(r["kept"], r["duplicates"]) for r in rows if r["scale"] == scale}
        print(f"{scale}x: every engine kept the same count: {len(same) == 1}")
        walls = {w: sorted(r["wall_s"] for r in rows if r["scale"] == scale and r["engine"] == "local"
                           and r["workers"] == w) for w in (1, 2)}
        if walls[1] and walls[2]:  # repeat local:1,local:2 in --runs for medians
            one, two = statistics.median(walls[1]), statistics.median(walls[2])
            print(f"{scale}x: local 2 workers vs 1: {one / two:.2f}x (median wall {one:.1f} s vs {two:.1f} s "
                  f"over {len(walls[1])} and {len(walls[2])} runs)")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

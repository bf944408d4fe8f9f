"""Chat vector at Llama-2-7B widths: kovocab's streaming `chat-vector` vs load-three-models, same run.

    .venv/bin/python bench/chat_vector_bench.py [--layers 4] [--dir /tmp/kovocab-bench-chat-vector] [--clean]

1. Writes three random bf16 checkpoints with Llama-2-7B's tensor shapes (hidden 4096, MLP
   11008) but --layers blocks instead of 32 (this machine has 24 GiB for everyone), in
   --max-shard-gb shards, tensor by tensor, once; later runs reuse them:
   B (vocabulary 32,000, Llama-2's tokenizer.model), I = B + noise (same vocabulary),
   C = B grown to 46,336 rows + noise (Chinese-LLaMA-2's tokenizer cut to 46,336 pieces:
   its first 32,000 are Llama-2's).
2. Each side runs in a child process; wall time, peak RSS (ru_maxrss from wait4) and
   peak anonymous RSS (sampled from /proc) are recorded:
   - kovocab: `kovocab chat-vector` (includes the sha256 of every input file);
   - load_three: safetensors.torch.load_file of B, I and C, C[k] = C[k] + (I[k] - B[k])
     (float32 per tensor, base rows only, rounded to bf16), save_file in C's shards.
3. The two outputs are compared tensor by tensor (must be identical).
Writes results.json in --out and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchdata import ROOT
from embeddings_bench import (
    GB,
    LLAMA2,
    LLAMA2_7B,
    _mem_available,
    llama_tensors,
    run_child,
    truncated_tokenizer,
)

TARGET = 46336

LOAD_THREE_SIDE = """
import json, shutil, sys, time, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
b_dir, i_dir, c_dir, out = map(Path, sys.argv[1:5])
def load(d):
    weight_map = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    state = {}
    for shard in sorted(set(weight_map.values())):
        state.update(load_file(d / shard))
    return state, weight_map
t = time.perf_counter()
B, _ = load(b_dir); I, _ = load(i_dir); C, weight_map = load(c_dir)
print(f"loaded {time.perf_counter() - t:.1f} s", flush=True)
for name, c in C.items():
    d = I[name].float() - B[name].float()
    merged = c.float()
    merged[: d.shape[0]] += d
    C[name] = merged.to(c.dtype)
print(f"added {time.perf_counter() - t:.1f} s", flush=True)
out.mkdir(parents=True, exist_ok=True)
for shard in sorted(set(weight_map.values())):
    part = {k: C[k] for k, s in weight_map.items() if s == shard}
    save_file(part, str(out / shard), metadata={"format": "pt"})
for name in ("model.safetensors.index.json", "config.json", "tokenizer.model"):
    shutil.copyfile(c_dir / name, out / name)
print(f"saved {time.perf_counter() - t:.1f} s", flush=True)
"""


def write_model(folder: Path, vocab: int, noise_seed: int | None, tokenizer: Path,
                max_shard_bytes: float) -> None:
    """B's N(0, 0.02) matrices (seeded per tensor, so B, I and C share them), C's extra rows,
    then N(0, 0.002) noise from `noise_seed`; bf16, generated while being written."""
    import torch

    from kovocab.model.safetensors_io import TensorEntry, write_shard, write_tensor

    if (folder / ".complete").is_file():
        print(f"reusing {folder}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    config = {**LLAMA2_7B, "vocab_size": vocab}
    names = llama_tensors(LLAMA2_7B)  # B's shapes; C's embeddings and head have more rows
    shapes = {n: ((vocab, s[1]) if n.endswith(("embed_tokens.weight", "lm_head.weight")) else s)
              for n, s in names}
    seeds = {n: k for k, (n, _) in enumerate(names)}
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for name, _ in names:
        n = 2 * _numel(shapes[name])
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(TensorEntry(name, "BF16", shapes[name], 0, 0))
        size += n

    def fill(t: TensorEntry, out: object) -> None:
        gen = torch.Generator().manual_seed(seeds[t.name])
        if len(t.shape) == 1:
            x = torch.ones(t.shape)
        else:
            x = torch.empty(t.shape).normal_(0, 0.02, generator=gen)  # rows past 32,000: C's own
        if noise_seed is not None:
            x += torch.empty(t.shape).normal_(0, 0.002, generator=gen.manual_seed(noise_seed + seeds[t.name]))
        write_tensor(x.to(torch.bfloat16), out)  # type: ignore[arg-type]

    weight_map, total = {}, 0
    t0 = time.perf_counter()
    for k, entries in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(folder / fname, entries, fill, {"format": "pt"})
        weight_map.update({t.name: fname for t in entries})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(tokenizer, folder / "tokenizer.model")
    (folder / ".complete").write_text("")
    print(f"{folder.name}: {total / GB:.2f} GB in {len(shards)} shards, {time.perf_counter() - t0:.0f} s")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def compare(a: Path, b: Path) -> dict:
    """Tensor by tensor, one at a time: the same names, and every tensor bitwise equal."""
    import torch

    from kovocab.model.safetensors_io import open_checkpoint, read_tensor

    ca, cb = open_checkpoint(a), open_checkpoint(b)
    differ = [n for n in ca.weight_map
              if not torch.equal(read_tensor(a / ca.weight_map[n], n), read_tensor(b / cb.weight_map[n], n))]
    return {"same_names": set(ca.weight_map) == set(cb.weight_map), "tensors": len(ca.weight_map),
            "differing": differ}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kovocab-bench-chat-vector"), help="work folder")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-chat-vector")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (Llama-2-7B: 32)")
    ap.add_argument("--max-shard-gb", type=float, default=1.0)
    ap.add_argument("--clean", action="store_true", help="delete the work folder at the end")
    args = ap.parse_args()

    LLAMA2_7B["num_hidden_layers"] = args.layers
    work = args.dir / f"{args.layers}layers"
    tok = truncated_tokenizer(args.dir / "expanded-46336" / "tokenizer.model", TARGET)
    b, i, c = work / "B", work / "I", work / "C"
    write_model(b, 32000, None, LLAMA2, args.max_shard_gb * GB)
    write_model(i, 32000, 1_000_000, LLAMA2, args.max_shard_gb * GB)
    write_model(c, TARGET, 2_000_000, tok, args.max_shard_gb * GB)
    sizes = {m.name: round(sum(p.stat().st_size for p in m.glob("*.safetensors")) / GB, 2) for m in (b, i, c)}
    results: dict = {"machine": {"cpus": os.cpu_count(), "mem_available_gb": round(_mem_available(), 1)},
                     "layers": args.layers, "input_gb": sizes,
                     "largest_tensor_gb": round(TARGET * 4096 * 2 / GB, 2)}
    outs = {"kovocab": work / "out-kovocab", "load_three": work / "out-load-three"}
    for side, out in outs.items():
        shutil.rmtree(out, ignore_errors=True)
        for m in (b, i, c):  # the same warm page cache for both sides
            for p in m.glob("*.safetensors"):
                with open(p, "rb") as f:
                    while f.read(64 << 20):
                        pass
        if side == "kovocab":
            cmd = [sys.executable, "-m", "kovocab", "chat-vector", "--base", str(b), "--instruct", str(i),
                   "--model", str(c), "--out", str(out)]
        else:
            cmd = [sys.executable, "-c", LOAD_THREE_SIDE, str(b), str(i), str(c), str(out)]
        results[side] = run_child(cmd, max(1.0, _mem_available() - 2.0), args.dir / f"{side}.log")
    stats = json.loads((outs["kovocab"] / "manifest.json").read_text())["stats"]
    results["kovocab"]["hash_seconds"] = stats["hash_seconds"]
    results["kovocab"]["seconds_without_hashing"] = round(stats["seconds"] - stats["hash_seconds"], 1)
    results["outputs"] = compare(outs["kovocab"], outs["load_three"])
    k, t = results["kovocab"], results["load_three"]
    results["ratios"] = {"peak_rss_load_three_over_kovocab": round(t["peak_rss_gb"] / k["peak_rss_gb"], 1),
                         "seconds_load_three_over_kovocab": round(t["seconds"] / k["seconds"], 2)}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("| side | outcome | wall s | peak RSS GB | peak anon RSS GB |\n|---|---|---:|---:|---:|")
    for side in outs:
        r = results[side]
        print(f"| {side} | {r['outcome']} | {r['seconds']} | {r['peak_rss_gb']} | {r['peak_anon_rss_gb']} |")
    print(json.dumps({k: v for k, v in results.items() if k not in outs}, indent=2))
    print(f"results: {args.out / 'results.json'}")
    if args.clean:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()

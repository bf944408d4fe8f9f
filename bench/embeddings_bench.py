"""Embedding resize at Llama-2-7B scale: kovocab's file-level path vs transformers, same run.

    .venv/bin/python bench/embeddings_bench.py [--dir /tmp/kovocab-bench-7b] [--clean]

1. Writes a random bf16 checkpoint with Llama-2-7B's shapes and shard layout (13.5 GB,
   two shards split at 10 GB like meta-llama/Llama-2-7b-hf), tensor by tensor, once;
   later runs reuse it. Llama-2's real tokenizer.model goes beside it.
2. Expanded tokenizer: the real Chinese-LLaMA-2 tokenizer cut to its first 46,336 pieces
   (or --tokenizer), so 14,336 new pieces get subword-mean rows.
3. Each side runs in a child process; wall time, peak RSS (ru_maxrss from wait4) and peak
   anonymous RSS (sampled from /proc) are recorded:
   - kovocab: `kovocab resize-embeddings` (subword-mean, pad to 64);
   - transformers: from_pretrained(dtype=bf16) + resize_token_embeddings(46336,
     mean_resizing=True) + save_pretrained, stopped after --transformers-timeout s;
   - transformers_no_mean: the same with mean_resizing=False (load, resize, save only).
   A memory guard kills a transformers side (and says so) when its anonymous memory would
   exhaust the machine, rather than let the kernel pick a victim among other users.
   The cost per row of mean_resizing's MultivariateNormal.sample is measured on its own.
Writes results.json in --out and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchdata import DATA, ROOT

LLAMA2 = DATA / "llama2_tokenizer" / "tokenizer.model"
CHINESE = DATA / "tokenizers" / "chinese_llama2_expanded" / "tokenizer.model"
GB = 1e9
TARGET = 46336
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
             "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "hidden_act": "silu", "initializer_range": 0.02, "bos_token_id": 1,
             "eos_token_id": 2, "tie_word_embeddings": False, "dtype": "bfloat16", "use_cache": True}


def llama_tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes in LlamaForCausalLM's state_dict order (the order HF shards in)."""
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def write_checkpoint(folder: Path, max_shard_bytes: float) -> None:
    """Random N(0, 0.02) matrices and unit norms in bf16, generated while being written."""
    import torch

    from kovocab.model.safetensors_io import TensorEntry, write_shard, write_tensor

    if (folder / ".complete").is_file():
        print(f"reusing {folder}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for name, shape in llama_tensors(LLAMA2_7B):
        n = 2 * int(torch.tensor(shape).prod())
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(TensorEntry(name, "BF16", shape, 0, 0))
        size += n
    gen = torch.Generator().manual_seed(0)

    def fill(t: TensorEntry, out: object) -> None:
        if len(t.shape) == 1:
            x = torch.ones(t.shape, dtype=torch.bfloat16)
        else:
            x = torch.empty(t.shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen)
        write_tensor(x, out)  # type: ignore[arg-type]

    weight_map, total = {}, 0
    t0 = time.perf_counter()
    for k, entries in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(folder / fname, entries, fill, {"format": "pt"})
        weight_map.update({t.name: fname for t in entries})
        print(f"  wrote {fname} ({sum(2 * _numel(t.shape) for t in entries) / GB:.2f} GB)")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(LLAMA2_7B, indent=2))
    shutil.copyfile(LLAMA2, folder / "tokenizer.model")
    (folder / ".complete").write_text("")
    print(f"checkpoint: {total / GB:.2f} GB in {len(shards)} shards, {time.perf_counter() - t0:.0f} s")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def truncated_tokenizer(out: Path, n: int) -> Path:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(CHINESE.read_bytes())
    del proto.pieces[n:]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _mem_available() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


def run_child(argv: list[str], anon_cap_gb: float | None, log: Path, timeout_s: float | None = None) -> dict:
    """Run one side; wall time, ru_maxrss (from wait4, this child only), peak RssAnon."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: Path("/proc/self/oom_score_adj").write_text("1000"))
    peak_anon, guard = 0, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        anon = _status_kb(proc.pid, "RssAnon")
        peak_anon = max(peak_anon, anon)
        if anon_cap_gb is not None and anon * 1024 / GB > anon_cap_gb and guard is None:
            guard = f"killed by the benchmark's memory guard at {anon * 1024 / GB:.1f} GB anonymous RSS"
            os.kill(proc.pid, signal.SIGKILL)
        if timeout_s is not None and time.perf_counter() - t0 > timeout_s and guard is None:
            guard = f"stopped by the benchmark's time limit ({timeout_s:.0f} s)"
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.1)
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4 already
    res = {"seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 2),
           "peak_anon_rss_gb": round(peak_anon * 1024 / GB, 2), "returncode": code,
           "log_tail": log.read_text(errors="replace").splitlines()[-6:]}
    if guard:
        res["outcome"] = guard
    elif code == -signal.SIGKILL:
        res["outcome"] = "killed by SIGKILL (kernel OOM killer)"
    else:
        res["outcome"] = "ok" if code == 0 else f"failed (exit {code})"
    return res


TRANSFORMERS_SIDE = """
import sys, time, torch
from transformers import AutoModelForCausalLM
t = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
print(f"from_pretrained {time.perf_counter() - t:.1f} s", flush=True)
m.resize_token_embeddings(int(sys.argv[3]), mean_resizing=sys.argv[4] == "mean")
print(f"resize {time.perf_counter() - t:.1f} s", flush=True)
m.save_pretrained(sys.argv[2])
print(f"save_pretrained {time.perf_counter() - t:.1f} s", flush=True)
"""


def mvn_rows_per_second(hidden: int, rows: int = 32) -> float:
    """What transformers' mean_resizing pays per new row: MultivariateNormal(hidden).sample."""
    import torch

    a = torch.randn(hidden, hidden) / hidden**0.5
    cov = a @ a.T + 1e-3 * torch.eye(hidden)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(hidden), covariance_matrix=1e-9 * cov)
    t0 = time.perf_counter()
    mvn.sample((rows,))
    return round(rows / (time.perf_counter() - t0), 2)


def check_output(src: Path, out: Path, tokenizer: Path) -> dict:
    """Spot checks outside the timed child: shapes, old rows bitwise, a few subword means."""
    import sentencepiece as spm
    import torch
    from sentencepiece import sentencepiece_model_pb2 as pb

    from kovocab.model.safetensors_io import open_checkpoint, read_tensor

    a, b = open_checkpoint(src), open_checkpoint(out)
    checks = {}
    base = pb.ModelProto()
    base.ParseFromString(LLAMA2.read_bytes())
    base.normalizer_spec.add_dummy_prefix = False
    split = spm.SentencePieceProcessor(model_proto=base.SerializeToString())
    exp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old = read_tensor(src / a.weight_map[name], name)
        new = read_tensor(out / b.weight_map[name], name)
        ok = new.shape == (TARGET, 4096) and new.dtype == torch.bfloat16 and torch.equal(new[:32000], old)
        for i in (32000, 40000, 46000):
            ids = split.encode(exp.id_to_piece(i).replace("\u2581", " "))
            ok &= torch.allclose(new[i].float(), old[ids].double().mean(0).float(), rtol=2**-7, atol=1e-6)
        checks[name] = ok
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kovocab-bench-7b"), help="work folder (~42 GB)")
    ap.add_argument("--tokenizer", type=Path, help="expanded tokenizer (default: Chinese-LLaMA-2, 46336)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-embeddings")
    ap.add_argument("--max-shard-gb", type=float, default=10.0)
    ap.add_argument("--layers", type=int, default=32, help="fewer layers for a quick trial of the script")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--transformers-timeout", type=float, default=600.0,
                    help="seconds before the mean_resizing=True side is stopped")
    ap.add_argument("--clean", action="store_true", help="delete the work folder at the end")
    args = ap.parse_args()

    LLAMA2_7B["num_hidden_layers"] = args.layers
    ckpt = args.dir / ("llama2-7b-random-bf16" if args.layers == 32 else f"llama2-7b-{args.layers}layers")
    write_checkpoint(ckpt, args.max_shard_gb * GB)
    tok = args.tokenizer or truncated_tokenizer(args.dir / "expanded-46336" / "tokenizer.model", TARGET)
    results: dict = {"machine": {"cpus": os.cpu_count(), "mem_available_gb": round(_mem_available(), 1)},
                     "checkpoint": str(ckpt), "tokenizer": str(tok), "target_rows": TARGET}

    out_k = args.dir / "out-kovocab"
    shutil.rmtree(out_k, ignore_errors=True)
    cmd = [sys.executable, "-m", "kovocab", "resize-embeddings", "--model", str(ckpt),
           "--tokenizer", str(tok), "--out", str(out_k)]
    results["kovocab"] = run_child(cmd, None, args.dir / "kovocab.log")
    if results["kovocab"]["outcome"] == "ok":
        results["kovocab"]["checks"] = check_output(ckpt, out_k, tok)
        results["kovocab"]["manifest_stats"] = json.loads((out_k / "manifest.json").read_text())["stats"]
    shutil.rmtree(out_k, ignore_errors=True)

    if not args.skip_transformers:
        # Both with the same memory guard; mean_resizing=True under a time limit as well,
        # because MultivariateNormal.sample runs one 4096x4096 mat-vec per new row on CPU.
        out_t = args.dir / "out-transformers"
        for side, init, limit in (("transformers", "mean", args.transformers_timeout),
                                  ("transformers_no_mean", "normal", None)):
            shutil.rmtree(out_t, ignore_errors=True)
            cap = max(1.0, _mem_available() - 2.0)
            cmd = [sys.executable, "-c", TRANSFORMERS_SIDE, str(ckpt), str(out_t), str(TARGET), init]
            results[side] = run_child(cmd, cap, args.dir / f"{side}.log", limit)
            results[side]["anon_rss_cap_gb"] = round(cap, 1)
            shutil.rmtree(out_t, ignore_errors=True)
        results["mvn_sample_rows_per_s"] = mvn_rows_per_second(LLAMA2_7B["hidden_size"])

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("| side | outcome | wall s | peak RSS GB | peak anon RSS GB |\n|---|---|---:|---:|---:|")
    for side in ("kovocab", "transformers", "transformers_no_mean"):
        r = results.get(side)
        if r:
            print(f"| {side} | {r['outcome']} | {r['seconds']} | {r['peak_rss_gb']} "
                  f"| {r['peak_anon_rss_gb']} |")
    print(json.dumps({k: v for k, v in results.items() if not k.startswith(("kovocab", "transformers"))},
                     indent=2))
    print(f"results: {args.out / 'results.json'}")
    if args.clean:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Full training vs LoRA on the same model: trainable parameters, optimizer memory, tokens/s.

One process (a 1-rank ZeRO-3 job on CPU, gloo), kovocab's own engine code
(`load_model`, `add_adapters`, `build_engine`): for each model size and each arm
(full: `train: all`; LoRA rank 8 on every linear of attention and MLP with the embeddings
and LM head trained in full, Chinese-LLaMA's recipe; LoRA with the new rows only; LoRA
adapters only) it builds the engine, runs warm-up + timed steps on random token blocks,
and reads the optimizer's own tensors (fp32 masters + Adam moments, what ZeRO-3 keeps
per rank). Writes runs/bench-lora/results.json and prints a Markdown table.

    .venv/bin/python bench/lora_bench.py [--steps 8] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchdata import ROOT

SIZES = {  # hidden, layers, intermediate, heads, kv heads; vocabulary 46,336 (the main job's tokenizer)
    "tiny (main job)": (64, 2, 172, 4, 2),
    "small": (512, 4, 1376, 8, 4),
}
VOCAB, BASE_VOCAB = 46336, 32000
ARMS = {
    "full": ("all", None),
    "lora + embeddings": ("lora", "all"),
    "lora + new rows": ("lora", "new_rows"),
    "lora only": ("lora", "frozen"),
}


def optimizer_bytes(engine: Any) -> int:
    """Bytes of what ZeRO-3's optimizer holds on this rank: fp32 master partitions and Adam states."""
    import torch

    opt = engine.optimizer
    total = sum(t.numel() * t.element_size() for t in getattr(opt, "fp32_partitioned_groups_flat", []))
    for state in opt.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def run_arm(model_dir: Path, arm: str, steps: int, seq_len: int, ds_json: Path) -> dict[str, Any]:
    import gc

    import torch

    from kovocab.pretraining.config import LoraConfig, PretrainConfig, StageConfig, deepspeed_config
    from kovocab.pretraining.engine import build_engine, load_model
    from kovocab.pretraining.lora import add_adapters, trainable_counts

    train, embeddings = ARMS[arm]
    stage = StageConfig(name=arm, steps=steps + 2, lr=1e-4, train=train)  # type: ignore[arg-type]
    lora = LoraConfig(rank=8, alpha=16, dropout=0.0, embeddings=embeddings) if embeddings else None
    cfg = PretrainConfig(model_dir=model_dir, train_data=(model_dir,), out_dir=model_dir, stages=(stage,),
                         deepspeed_config=ds_json, seq_len=seq_len, precision="fp32", lora=lora)
    ds = deepspeed_config(cfg, world_size=1, on_gpu=False)
    torch.manual_seed(0)
    model, keep = load_model(cfg, ds)
    if lora is not None:
        model = add_adapters(model, lora)
    engine = build_engine(model, stage, ds, BASE_VOCAB, on_gpu=False, lora=lora)
    engine.train()
    counts = trainable_counts(model)
    ids = torch.randint(0, VOCAB, (1, seq_len))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        if i >= 2:  # warm-up: ZeRO-3 traces the module order and allocates the optimizer state
            times.append(time.perf_counter() - t0)
    result = {**counts, "optimizer_bytes": optimizer_bytes(engine),
              "tokens_per_s": seq_len / statistics.median(times)}
    engine.destroy()
    del engine, model, keep
    gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per arm (after 2 warm-up steps)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-lora" / "results.json")
    args = ap.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kovocab.pretraining.engine import setup_distributed

    setup_distributed("gloo")
    figures: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "steps": args.steps, "seq_len": args.seq_len, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size, (hidden, layers, inter, heads, kv) in SIZES.items():
            model_dir = Path(tmp) / size.split()[0]
            torch.manual_seed(0)
            LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                                         num_hidden_layers=layers, num_attention_heads=heads,
                                         num_key_value_heads=kv, max_position_embeddings=args.seq_len,
                                         tie_word_embeddings=False)).save_pretrained(model_dir)
            figures["results"][size] = {
                arm: run_arm(model_dir, arm, args.steps, args.seq_len, ROOT / "pretrain" / "zero3_cpu.json")
                for arm in ARMS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print("| model | arm | parameters | trainable | share | optimizer MiB | vs full | tokens/s | vs full |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, arms in figures["results"].items():
        full = arms["full"]
        for arm, r in arms.items():
            opt, speed, share = r["optimizer_bytes"], r["tokens_per_s"], r["trainable"] / r["total"]
            print(f"| {size} | {arm} | {r['total']:,} | {r['trainable']:,} | {share:.1%} "
                  f"| {opt / 2**20:.1f} | {opt / full['optimizer_bytes']:.2f} "
                  f"| {speed:,.0f} | {speed / full['tokens_per_s']:.2f} |")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

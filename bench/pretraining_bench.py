"""Pretraining throughput on this machine: the tiny CPU recipe under ZeRO-3, 1 rank vs 2 ranks.

Builds a tiny Llama (hidden 64, 2 layers), resizes it to an expanded tokenizer with
kovocab, and trains `pretrain/tiny_cpu.yaml`'s two stages for a few steps with
`launch_pretrain` at 1 and at 2 processes. Reports median tokens/s over the steps after
warm-up (from metrics.jsonl) and the loss before/after. Writes runs/bench-pretraining/results.json.

    .venv/bin/python bench/pretraining_bench.py [--steps 40] [--tokenizer runs/llama2-ko-46k/tokenizer]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchdata import DATA, ROOT


def tiny_model(work: Path, tokenizer: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kovocab.model.resize import resize_embeddings

    torch.manual_seed(0)
    base = work / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=False)).save_pretrained(base)
    shutil.copy(DATA / "llama2_tokenizer" / "tokenizer.model", base / "tokenizer.model")
    return resize_embeddings(base, tokenizer, work / "resized").out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="steps per run (half per stage)")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "runs" / "llama2-ko-46k" / "tokenizer")
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-pretraining" / "results.json")
    args = ap.parse_args()
    from kovocab.pretraining.launch import launch_pretrain

    half = max(1, args.steps // 2)
    stages = (f"[{{name: s1, train: new_embeddings, steps: {half}, lr: 1.0e-2, warmup_steps: 2}}, "
              f"{{name: s2, train: all, steps: {half}, lr: 3.0e-3, embedding_lr: 6.0e-3, warmup_steps: 2}}]")
    figures: dict[str, object] = {"machine": platform.processor() or platform.machine(), "steps": 2 * half}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model(work, args.tokenizer)
        for nproc in (1, 2):
            out = work / f"run{nproc}"
            sets = (f"pretrain.model_dir={model}", f"pretrain.out_dir={out}",
                    f"pretrain.train_data=[{args.corpus}]", f"pretrain.eval_korean=[{args.corpus}]",
                    f"pretrain.token_store_dir={work / 'tokens'}",
                    "pretrain.max_documents=5000", "pretrain.eval_every=0", "pretrain.export_stages=false",
                    "pretrain.checkpoint_every=0", f"pretrain.stages={stages}")
            t0 = time.perf_counter()
            res = launch_pretrain(ROOT / "pretrain" / "tiny_cpu.yaml", nproc, overrides=sets)
            wall = time.perf_counter() - t0
            rows = [json.loads(x) for x in res.metrics.read_text(encoding="utf-8").splitlines()]
            steady = [r["tokens_per_s"] for r in rows[3:]] or [r["tokens_per_s"] for r in rows]
            figures[f"ranks_{nproc}"] = {
                "median_tokens_per_s": round(statistics.median(steady), 1),
                "tokens_per_step": rows[0]["tokens"], "loss_first": rows[0]["loss"],
                "loss_last": rows[-1]["loss"],
                "wall_seconds": round(wall, 1), "train_seconds": round(res.seconds, 1),
            }
            print(f"{nproc} rank(s): {figures[f'ranks_{nproc}']}")
    one, two = figures["ranks_1"], figures["ranks_2"]
    assert isinstance(one, dict) and isinstance(two, dict)
    figures["two_over_one"] = round(two["median_tokens_per_s"] / one["median_tokens_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"2 ranks / 1 rank tokens/s: {figures['two_over_one']}x; figures: {args.out}")


if __name__ == "__main__":
    main()

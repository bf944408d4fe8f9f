"""KoBEST scoring speed: kovocab's batched scorer vs a naive one-pair-at-a-time loop, same model.

    .venv/bin/python bench/eval_bench.py [--items 50] [--hidden 64] [--layers 2] [--window 256]
                                         [--vocab 46336] [--shots 0] [--batch-size 16]

A random Llama shaped like recipes/tiny_cpu.yaml's (hidden 64, 2 layers, 46,336 rows) scores the
first --items test items of every KoBEST task, tokenized with the real Llama-2 tokenizer, three
ways: naive (one unpadded forward per (prompt, choice) pair, full logits, as a plain loop would),
kovocab without context sharing (batched pairs, LM head only where needed), and kovocab (an
item's prompt once, choices on its KV cache). Prints items/s per task and the largest
disagreement in log-likelihood between the ways. CPU threads: torch's default.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from benchdata import DATA
from transformers import LlamaConfig, LlamaForCausalLM

from kovocab.evaluation import kobest
from kovocab.evaluation.loglikelihood import continuation_logprobs
from kovocab.evaluation.scoring import load_scorer

LLAMA2 = DATA / "llama2_tokenizer" / "tokenizer.model"


def naive(scorer, pairs):  # type: ignore[no-untyped-def]
    out = []
    with torch.inference_mode():
        for ctx, cont in pairs:
            full = [*ctx, *cont][-(scorer.window + 1) :]
            logits = scorer.model(torch.tensor([full[:-1]])).logits[0].float()
            lp = torch.log_softmax(logits, -1)[-len(cont) :]
            out.append(float(lp.gather(-1, torch.tensor(cont)[:, None]).sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=46336)
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kovocab-eval-bench-"))
    try:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                          intermediate_size=args.hidden * 27 // 10, num_hidden_layers=args.layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.window)
        LlamaForCausalLM(cfg).save_pretrained(tmp)
        scorer = load_scorer(tmp, LLAMA2, device="cpu")
        rows = []
        for task in kobest.TASKS:
            docs = kobest.load_docs(DATA / "kobest", task, "test")[: args.items]
            pool = kobest.load_docs(DATA / "kobest", task, "train") if args.shots else []
            prompts = kobest.fewshot_contexts(docs, pool, args.shots, kobest.FEWSHOT_SEED)
            pairs = [scorer.encode_pair(p, " " + c)
                     for d, p in zip(docs, prompts, strict=True) for c in d.choices]
            tokens = sum(len(c) + len(k) for c, k in pairs)
            row = {"task": task, "items": len(docs), "pairs": len(pairs), "tokens": tokens}
            results = {}
            for way, run in (
                ("naive", lambda p=pairs: naive(scorer, p)),
                ("batched", lambda p=pairs: [x for x, _ in continuation_logprobs(
                    scorer, p, args.batch_size, False, share_contexts=False)]),
                ("shared", lambda p=pairs: [x for x, _ in continuation_logprobs(
                    scorer, p, args.batch_size, False, share_contexts=True)]),
            ):
                start = time.perf_counter()
                results[way] = run()
                row[f"{way}_items_per_s"] = len(docs) / (time.perf_counter() - start)
            row["max_abs_diff"] = max(abs(a - b) for way in ("batched", "shared")
                                      for a, b in zip(results["naive"], results[way], strict=True))
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"model: hidden {args.hidden}, {args.layers} layers, {args.vocab} rows, window {args.window}; "
          f"{args.shots}-shot, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print("| task | items | pairs | tokens | naive items/s | batched items/s | shared items/s "
          "| max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['items']} | {r['pairs']} | {r['tokens']} | {r['naive_items_per_s']:.1f} | "
              f"{r['batched_items_per_s']:.1f} | {r['shared_items_per_s']:.1f} | {r['max_abs_diff']:.1e} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Size sweep: how many Korean pieces to append to Llama-2's 32,000 (bench/README.md "Size sweep").

    .venv/bin/python bench/sweep_bench.py [--corpus runs/corpus-mix] [--out runs/bench-sweep]

1. Shards the default corpus recipe (corpora/korean_mix.yaml) if --corpus does not exist.
2. expand_vocab(sweep=SIZES) with the default tokenizer recipe's source_weights and
   max_sentences (tokenizers/llama2_ko_46k.yaml): one Korean model (trained for the largest
   size), cut at each size; held-out Korean tokens/sentence and chars/token per size (the
   eval split).
3. The same figures on the bench's KLUE + KoBEST Korean text (never trained on).
4. For each size, a direct expansion (its own, smaller Korean model, as expand-vocab
   without --sweep trains it): how many held-out sentences get the same ids as the cut.
Writes results.json in --out and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchdata import ROOT
from tokenizer_bench import LLAMA2, korean_eval_texts

SIZES = (4096, 8192, 14336, 23296, 32768)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus-mix")
    ap.add_argument("--corpus-recipe", type=Path, default=ROOT / "corpora" / "korean_mix.yaml",
                    help="corpus recipe to shard into --corpus when it does not exist")
    ap.add_argument("--recipe", type=Path, default=ROOT / "tokenizers" / "llama2_ko_46k.yaml",
                    help="tokenizer recipe whose expand_vocab source_weights and max_sentences are used")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-sweep")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--no-direct", action="store_true", help="skip the direct expansions (step 4)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.corpus.exists():
        subprocess.run([sys.executable, "-m", "kovocab", "shard", "--recipe",
                        str(args.corpus_recipe), "--out", str(args.corpus)], check=True)
    import sentencepiece as spm

    from kovocab import expand_vocab
    from kovocab.config import load_section, read_recipe
    from kovocab.tokenizer.expand import ExpandVocabConfig, _held_out_texts

    recipe = load_section(ExpandVocabConfig, read_recipe(args.recipe), "expand_vocab")
    same_data = {"source_weights": recipe.source_weights, "max_sentences": recipe.max_sentences}
    start = time.perf_counter()
    res = expand_vocab(LLAMA2, [args.corpus], args.out / "sweep", target_vocab_size=32000 + max(sizes),
                       sweep=sizes, **same_data)
    seconds = time.perf_counter() - start
    bench_text = korean_eval_texts()
    held_out = _held_out_texts((args.corpus,), None)
    chars = sum(len(t) for t in bench_text)
    rows = []
    for row in res.sweep:
        sp = spm.SentencePieceProcessor(model_file=str(Path(row["tokenizer"]) / "tokenizer.model"))
        n = sum(len(x) for x in sp.encode(bench_text))
        out = {**row, "bench_chars_per_token": chars / n, "bench_tokens_per_sentence": n / len(bench_text)}
        if not args.no_direct:
            direct = expand_vocab(LLAMA2, [args.corpus], args.out / f"direct-{row['new_pieces']}",
                                  target_vocab_size=row["vocab_size"], report=False, **same_data)
            dsp = spm.SentencePieceProcessor(model_file=str(direct.merge.tokenizer_model))
            same = sum(a == b for a, b in zip(sp.encode(held_out), dsp.encode(held_out), strict=True))
            dn = sum(len(x) for x in dsp.encode(held_out))
            out.update(direct_korean_vocab_size=direct.training.vocab_size,
                       direct_same_ids_share=same / len(held_out),
                       direct_korean_tokens_per_sentence=dn / len(held_out))
        rows.append(out)
    base = spm.SentencePieceProcessor(model_file=str(LLAMA2))
    base_bench = chars / sum(len(x) for x in base.encode(bench_text))
    results = {"sizes": sizes, "seconds_sweep": seconds, "korean_vocab_size": res.training.vocab_size,
               "held_out_sentences": len(held_out), "bench_sentences": len(bench_text),
               "base_bench_chars_per_token": base_bench, "rows": rows, "report": str(res.report_dir)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"sweep: one Korean model of {res.training.vocab_size:,} pieces, {seconds:.1f} s "
          f"(train once + {len(sizes)} cuts + report); held-out {len(held_out):,} sentences, "
          f"bench text {len(bench_text):,} sentences (Llama-2: {base_bench:.2f} chars/token)\n")
    print("| new pieces | vocab | held-out tok/sent | held-out chars/tok | KLUE+KoBEST chars/tok "
          "| golden | prefix of largest | direct: same ids | direct tok/sent |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        direct = (f"{r['direct_same_ids_share']:.1%} | {r['direct_korean_tokens_per_sentence']:.2f}"
                  if "direct_same_ids_share" in r else " | ")
        print(f"| {r['new_pieces']:,} | {r['vocab_size']:,} | {r['korean_tokens_per_sentence']:.2f} "
              f"| {r['korean_chars_per_token']:.3f} | {r['bench_chars_per_token']:.3f} "
              f"| {r['golden_tokens']} | {r['pieces_prefix_of_largest']} | {direct} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

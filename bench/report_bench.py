"""Report benchmark: encode throughput of the reference tokenizers on Korean news, side by side.

    .venv/bin/python bench/report_bench.py [--rounds 7] [--out runs/bench-report]

Loads every tokenizer through `kovocab.tokenizer.load` (what the report measures)
and encodes the 1,000 Korean news dev sentences (and the English side):
1. one call per line, one thread (the report's `encode_mb_per_s`);
2. each library's own batch call (sentencepiece and tokenizers use threads; tiktoken
   gets the same thread count), for scale.
Rounds are interleaved and the fastest round kept, so background load on these
2-core machines skews all tokenizers alike; ratios are against Llama-2 sentencepiece.
Then times one full `efficiency_report` over all five tokenizers. Writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchdata import DATA, ROOT, news_lines

from kovocab.tokenizer.load import (
    Encoder,
    SentencePieceEncoder,
    TiktokenEncoder,
    TokenizersEncoder,
    load_tokenizer,
)

TOKENIZERS = {
    "Llama-2 sentencepiece": DATA / "llama2_tokenizer" / "tokenizer.model",
    "Llama-2 tokenizer.json": DATA / "tokenizers" / "llama2_hf_json" / "tokenizer.json",
    "Llama-3 tiktoken": DATA / "tokenizers" / "llama3" / "tokenizer.model",
    "Mistral v1": DATA / "tokenizers" / "mistral_v1" / "tokenizer.model.v1",
    "Chinese-LLaMA-2": DATA / "tokenizers" / "chinese_llama2_expanded",
}
THREADS = os.cpu_count() or 1


def news(lang: str) -> list[str]:
    return [x.strip() for x in news_lines(lang) if x.strip()]


def encode_each(enc: Encoder, lines: list[str]) -> list[list[int]]:
    return [enc.encode(x) for x in lines]


def batch_call(enc: Encoder) -> Callable[[list[str]], object]:
    if isinstance(enc, SentencePieceEncoder):
        return lambda lines: enc.sp.encode(lines, num_threads=THREADS)
    if isinstance(enc, TokenizersEncoder):
        return lambda lines: enc.tok.encode_batch(lines, add_special_tokens=False)
    if isinstance(enc, TiktokenEncoder):
        return lambda lines: enc.enc.encode_ordinary_batch(lines, num_threads=THREADS)
    raise TypeError(type(enc))


def fastest(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time per function over interleaved rounds (order rotated each round)."""
    best = {name: float("inf") for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-report")
    args = ap.parse_args()
    encoders = {name: load_tokenizer(path) for name, path in TOKENIZERS.items()}
    results: dict[str, object] = {"threads_for_batch": THREADS, "rounds": args.rounds}
    rows = []
    for lang in ("ko", "en"):
        lines = news(lang)
        mb = sum(len(x.encode("utf-8")) for x in lines) / 1e6
        for enc in encoders.values():  # warm-up
            enc.encode(lines[0])
        per_line = fastest({n: partial(encode_each, e, lines) for n, e in encoders.items()}, args.rounds)
        batch = fastest({n: partial(batch_call(e), lines) for n, e in encoders.items()}, args.rounds)
        ref_line, ref_batch = per_line["Llama-2 sentencepiece"], batch["Llama-2 sentencepiece"]
        for name in encoders:
            row = {"set": f"news_{lang}", "tokenizer": name, "lines": len(lines), "mb": mb,
                   "per_line_mb_s": mb / per_line[name], "per_line_vs_llama2": ref_line / per_line[name],
                   "batch_mb_s": mb / batch[name], "batch_vs_llama2": ref_batch / batch[name]}
            rows.append(row)
    results["throughput"] = rows

    from kovocab.report.measure import efficiency_report

    ko, en = news("ko"), news("en")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ko.txt").write_text("\n".join(ko) + "\n", encoding="utf-8")
        (Path(tmp) / "en.txt").write_text("\n".join(en) + "\n", encoding="utf-8")
        start = time.perf_counter()
        efficiency_report(TOKENIZERS, {"news_ko": Path(tmp) / "ko.txt", "news_en": Path(tmp) / "en.txt"},
                          Path(tmp) / "report")
        results["efficiency_report_seconds"] = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"| set | tokenizer | one call per line MB/s | vs Llama-2 | batch ({THREADS} threads) MB/s "
          "| vs Llama-2 |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['set']} | {r['tokenizer']} | {r['per_line_mb_s']:.2f} | {r['per_line_vs_llama2']:.2f}x "
              f"| {r['batch_mb_s']:.2f} | {r['batch_vs_llama2']:.2f}x |")
    print(f"\nefficiency_report, 5 tokenizers x 2 sets x 1,000 lines: "
          f"{results['efficiency_report_seconds']:.1f} s; results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Byte-level BPE expansion: Korean efficiency and encode speed, each base beside its expansion.

    .venv/bin/python bench/bytelevel_bench.py [--corpus runs/corpus-mix] [--out runs/bench-bytelevel]
        [--bases llama3,smollm2,qwen3] [--max-sentences N]

1. Shards corpora/korean_mix.yaml into --corpus if it does not exist yet.
2. Runs each tokenizer recipe (tokenizers/llama3_ko.yaml: Llama-3 + 14,336;
   smollm2_ko.yaml: SmolLM2 + 16,384; qwen3_ko.yaml: Qwen3 + 14,336) through
   expand_vocab() with the recipe's weights and sample, timed.
3. On the Korean text of KLUE + KoBEST (29,050 sentences, never trained on), the base and
   its expansion side by side: characters per token, tokens per sentence, the share of
   tokens that are partial characters, and the golden sentence.
4. Encode speed of the expanded tokenizer.json against the base's: one text at a time
   (`Tokenizer.encode`, no batch threads), CPU seconds, the two interleaved five times and
   the best of each taken (the machine is shared and noisy; the ratio is the result).
Writes results.json in --out and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchdata import ROOT
from tokenizer_bench import korean_eval_texts

RECIPES = {"llama3": "llama3_ko.yaml", "smollm2": "smollm2_ko.yaml", "qwen3": "qwen3_ko.yaml"}
FLOORS = {"llama3": 1.9, "smollm2": 1.8}
GOLDEN = "안녕하세요, 오늘은 날씨가 좋네요."


def encode_seconds(toks: dict[str, object], texts: list[str], rounds: int = 5) -> dict[str, float]:
    best = {name: float("inf") for name in toks}
    for _ in range(rounds):
        for name, tok in toks.items():
            start = time.process_time()
            for t in texts:
                tok.encode(t, add_special_tokens=False)  # type: ignore[attr-defined]
            best[name] = min(best[name], time.process_time() - start)
    return best


def figures(tok: object, byte_ids: frozenset[int], texts: list[str]) -> dict[str, float]:
    ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]  # type: ignore[attr-defined]
    n = sum(len(x) for x in ids)
    chars = sum(len(t) for t in texts)
    return {
        "chars_per_token": chars / n,
        "tokens_per_sentence": n / len(texts),
        "partial_character_share": sum(1 for x in ids for i in x if i in byte_ids) / n,
        "golden_tokens": len(tok.encode(GOLDEN, add_special_tokens=False).ids),
    }  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus-mix")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-bytelevel")
    ap.add_argument("--bases", default="llama3,smollm2,qwen3")
    ap.add_argument("--max-sentences", type=int, default=None, help="override the recipes' sample size")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from tokenizers import Tokenizer

    from kovocab.cli import main as cli
    from kovocab.config import load_section, read_recipe
    from kovocab.tokenizer.expand import ExpandVocabConfig, expand_vocab
    from kovocab.tokenizer.load import load_tokenizer

    if not (args.corpus / "manifest.json").is_file():
        rc = cli(
            ["shard", "--recipe", str(ROOT / "corpora" / "korean_mix.yaml"), "--out", str(args.corpus), "-q"]
        )
        if rc:
            return rc
    texts = korean_eval_texts()
    results: dict[str, object] = {"eval_sentences": len(texts)}
    rows = []
    for name in args.bases.split(","):
        cfg = load_section(
            ExpandVocabConfig, read_recipe(ROOT / "tokenizers" / RECIPES[name]), "expand_vocab"
        )
        start = time.perf_counter()
        base = cfg.base if cfg.base.is_absolute() else (ROOT / "tokenizers" / cfg.base).resolve()
        res = expand_vocab(
            base,
            args.corpus,
            args.out / name,
            target_vocab_size=cfg.target_vocab_size,
            method=cfg.method,
            max_sentences=args.max_sentences or cfg.max_sentences,
            source_weights=cfg.source_weights,
            report=False,
            seed=cfg.seed,
        )
        seconds = time.perf_counter() - start
        base_dir, new_dir = args.out / name / "base_tokenizer", res.tokenizer_dir
        toks = {
            "base": Tokenizer.from_file(str(base_dir / "tokenizer.json")),
            "expanded": Tokenizer.from_file(str(new_dir / "tokenizer.json")),
        }
        speed = encode_seconds(toks, texts[:10000])
        entry = {
            "recipe": RECIPES[name],
            "expand_seconds": seconds,
            "training": res.training.sources and {"sentences": res.training.sentences},
            "base": {
                "vocab_size": toks["base"].get_vocab_size(),
                **figures(toks["base"], load_tokenizer(base_dir).byte_ids, texts),
            },
            "expanded": {
                "vocab_size": toks["expanded"].get_vocab_size(),
                **figures(toks["expanded"], load_tokenizer(new_dir).byte_ids, texts),
            },
            "encode_cpu_seconds_10k": speed,
            "encode_speed_ratio": speed["base"] / speed["expanded"],
            "manifest": json.loads((new_dir / "manifest.json").read_text(encoding="utf-8"))["stats"],
        }
        results[name] = entry
        rows.append((name, entry))
        (args.out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"\nKLUE + KoBEST Korean, {len(texts)} sentences\n")
    print(
        "| base | vocab | chars/token | tokens/sentence | partial-char share | golden "
        "| encode speed vs base | expand s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, e in rows:
        for side in ("base", "expanded"):
            f = e[side]  # type: ignore[index]
            speed = f"{e['encode_speed_ratio']:.2f}x" if side == "expanded" else ""  # type: ignore[index]
            secs = f"{e['expand_seconds']:.0f}" if side == "expanded" else ""  # type: ignore[index]
            print(
                f"| {name} {side} | {f['vocab_size']:,} | {f['chars_per_token']:.3f} | "
                f"{f['tokens_per_sentence']:.1f} | {f['partial_character_share']:.2%} | "
                f"{f['golden_tokens']} | "
                f"{speed} | {secs} |"
            )
    failed = [n for n, e in rows if n in FLOORS and e["expanded"]["chars_per_token"] < FLOORS[n]]  # type: ignore[index]
    slow = [n for n, e in rows if e["encode_speed_ratio"] < 0.9]  # type: ignore[operator]
    print(
        f"\nfloors (chars/token {FLOORS}, encode speed >= 0.9x): "
        f"{'all hold' if not failed and not slow else f'MISSED: {failed} {slow}'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

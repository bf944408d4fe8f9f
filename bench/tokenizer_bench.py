"""Tokenizer benchmark: training cost, Korean efficiency, encode throughput, side by side.

    .venv/bin/python bench/tokenizer_bench.py [--corpus runs/corpus-mix] [--out runs/bench-tokenizer]

1. Shards the default corpus recipe (corpora/korean_mix.yaml) if --corpus does not exist yet.
2. expand_vocab() to 46336 with plain BPE, the default tokenizer recipe's source_weights and
   sample size (tokenizers/llama2_ko_46k.yaml), timed against calling sentencepiece's
   trainer alone on the same sentences.
3. Plain vs morpheme-aware (Kiwi) BPE on the same weighted sample (--compare-sentences).
4. Characters per token and byte-fallback share on KLUE + KoBEST Korean text (never
   trained on), for Llama-2, Mistral v1, Chinese-LLaMA-2, Llama-3 and the expansions.
   Byte-fallback share is the report's definition (kovocab.tokenizer.load `byte_ids`):
   the share of tokens whose bytes are not whole UTF-8 characters, i.e. `<0xNN>` pieces
   in SentencePiece, and partial-character tokens in byte-level BPE (Llama-3).
5. Encode throughput (MB/s) of the expanded fast tokenizer against Llama-2's.
Writes results.json in --out and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from benchdata import DATA, ROOT, news_lines

LLAMA2 = DATA / "llama2_tokenizer" / "tokenizer.model"
HANGUL = re.compile("[\uac00-\ud7a3]")
LLAMA3_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def korean_eval_texts() -> list[str]:
    """Korean text of the KLUE dev sets and KoBEST dev+test: held out from all training."""
    texts: list[str] = []
    for name, keys in (
        ("klue-nli-v1.1_dev.json", ("premise", "hypothesis")),
        ("klue-sts-v1.1_dev.json", ("sentence1", "sentence2")),
    ):
        for row in json.loads((DATA / "klue" / name).read_text(encoding="utf-8")):
            texts += [row[k] for k in keys]
    for task in ("BoolQ", "COPA", "HellaSwag", "SentiNeg", "WiC"):
        for split in ("dev", "test"):
            lines = (DATA / "kobest" / task / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
            for line in lines[1:]:
                texts += [c for c in line.split("\t") if HANGUL.search(c)]
    return texts


def encoders() -> dict[str, object]:
    import sentencepiece as spm
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(DATA / "tokenizers" / "llama3" / "tokenizer.model"))
    return {
        "Llama-2 (32000)": spm.SentencePieceProcessor(model_file=str(LLAMA2)),
        "Mistral v1 (32000)": spm.SentencePieceProcessor(
            model_file=str(DATA / "tokenizers" / "mistral_v1" / "tokenizer.model.v1")
        ),
        "Chinese-LLaMA-2 (55296)": spm.SentencePieceProcessor(
            model_file=str(DATA / "tokenizers" / "chinese_llama2_expanded" / "tokenizer.model")
        ),
        "Llama-3 (128256)": tiktoken.Encoding(
            "llama3", pat_str=LLAMA3_PAT, mergeable_ranks=ranks, special_tokens={}
        ),
    }


def byte_token_ids(enc: object) -> frozenset[int]:
    """Ids whose bytes are not whole UTF-8 characters: the report's byte-fallback definition."""
    import sentencepiece as spm

    if isinstance(enc, spm.SentencePieceProcessor):  # <0xNN> pieces (whole pieces are always text)
        return frozenset(i for i in range(enc.get_piece_size()) if enc.is_byte(i))
    out = set()
    for i in range(enc.n_vocab):  # type: ignore[attr-defined]
        try:
            enc.decode_single_token_bytes(i).decode("utf-8")  # type: ignore[attr-defined]
        except UnicodeDecodeError:
            out.add(i)
        except KeyError:  # ids between the ranks and the special tokens
            pass
    return frozenset(out)


def efficiency(enc: object, texts: list[str]) -> dict[str, float]:
    import sentencepiece as spm

    chars = sum(len(t) for t in texts)
    byte_ids = byte_token_ids(enc)
    if isinstance(enc, spm.SentencePieceProcessor):
        ids = enc.encode(texts)
    else:
        ids = [enc.encode_ordinary(t) for t in texts]  # type: ignore[attr-defined]
    n = sum(len(x) for x in ids)
    nbytes = sum(1 for x in ids for i in x if i in byte_ids)
    return {
        "chars_per_token": chars / n,
        "tokens_per_sentence": n / len(texts),
        "byte_fallback_share": nbytes / n,
    }


def throughput(path: Path, texts: list[str], repeat: int = 3) -> float:
    """MB/s of tokenizers' batch encode (the fast tokenizer transformers uses)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        tok.encode_batch(texts, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
    return mb / best


def train_alone(sentences: list[str], out: Path, vocab_size: int) -> float:
    """sentencepiece's trainer alone, same settings, on an already sampled file."""
    import sentencepiece as spm

    text = out / "sentences.txt"
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    start = time.perf_counter()
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(out / "alone"),
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        input_sentence_size=0,
        num_threads=2,
        minloglevel=2,
    )
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus-mix")
    ap.add_argument("--recipe", type=Path, default=ROOT / "tokenizers" / "llama2_ko_46k.yaml",
                    help="tokenizer recipe whose expand_vocab source_weights and max_sentences are used")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-tokenizer")
    ap.add_argument(
        "--compare-sentences",
        type=int,
        default=100_000,
        help="sample size for plain vs morpheme-aware (Kiwi runs ~1-2k sentences/s on 2 cores)",
    )
    ap.add_argument("--unweighted", action="store_true",
                    help="also train on the same corpus without source_weights (a few minutes more)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from kovocab.config import load_section, read_recipe
    from kovocab.tokenizer.expand import ExpandVocabConfig, expand_vocab, korean_vocab_size_for
    from kovocab.tokenizer.train import sample_sentences
    from kovocab.tokenizer.weights import WeightedCorpus

    recipe = load_section(ExpandVocabConfig, read_recipe(args.recipe), "expand_vocab")
    weights, max_sentences = recipe.source_weights, recipe.max_sentences

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.corpus.is_file() and not (args.corpus / "manifest.json").is_file():
        from kovocab.cli import main as cli

        rc = cli(
            ["shard", "--recipe", str(ROOT / "corpora" / "korean_mix.yaml"), "--out", str(args.corpus), "-q"]
        )
        if rc:
            return rc
    results: dict[str, object] = {}

    start = time.perf_counter()
    plain = expand_vocab(LLAMA2, args.corpus, out / "bpe", report=False, source_weights=weights,
                         max_sentences=max_sentences)
    results["expand_vocab_seconds"] = time.perf_counter() - start
    results["recipe"] = str(args.recipe)
    results["sources"] = plain.training.sources
    sentences, _ = sample_sentences(WeightedCorpus((args.corpus,), weights), max_sentences, 0)
    results["sentencepiece_alone_seconds"] = train_alone(sentences, out, korean_vocab_size_for(14336))
    results["training_sentences"] = len(sentences)
    results["headline"] = plain.stats

    small = {}
    for method in ("bpe", "morpheme-bpe"):
        start = time.perf_counter()
        r = expand_vocab(
            LLAMA2,
            args.corpus,
            out / f"cmp-{method}",
            method=method,  # type: ignore[arg-type]
            max_sentences=args.compare_sentences,
            source_weights=weights,
            report=False,
        )
        small[method] = (r, time.perf_counter() - start)

    if args.unweighted:
        start = time.perf_counter()
        flat = expand_vocab(LLAMA2, args.corpus, out / "bpe-unweighted", report=False,
                            max_sentences=max_sentences)
        results["unweighted"] = {"seconds": time.perf_counter() - start, "stats": flat.stats,
                                 "sources": flat.training.sources}

    import sentencepiece as spm

    texts = korean_eval_texts()
    encs = encoders()
    encs["kovocab bpe (46336)"] = spm.SentencePieceProcessor(model_file=str(plain.merge.tokenizer_model))
    if args.unweighted:
        encs["kovocab bpe, no source_weights (46336)"] = spm.SentencePieceProcessor(
            model_file=str(flat.merge.tokenizer_model))
    for method, (r, _) in small.items():
        encs[f"kovocab {method}, {args.compare_sentences} sent. (46336)"] = spm.SentencePieceProcessor(
            model_file=str(r.merge.tokenizer_model)
        )
    eff = {name: efficiency(enc, texts) for name, enc in encs.items()}
    results["korean_eval"] = {
        "sentences": len(texts),
        "characters": sum(map(len, texts)),
        "by_tokenizer": eff,
    }
    results["compare_seconds"] = {m: s for m, (_, s) in small.items()}

    ko, en = news_lines("ko"), news_lines("en")
    base_json = DATA / "tokenizers" / "llama2_hf_json" / "tokenizer.json"
    new_json = plain.tokenizer_dir / "tokenizer.json"
    results["encode_mb_per_s"] = {
        "korean": {"llama2": throughput(base_json, ko), "expanded": throughput(new_json, ko)},
        "english": {"llama2": throughput(base_json, en), "expanded": throughput(new_json, en)},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))

    print(
        "\nexpand_vocab (read shards, sample, train, merge, export): "
        f"{results['expand_vocab_seconds']:.1f} s; "
        f"sentencepiece trainer alone on the same {len(sentences)} sentences: "
        f"{results['sentencepiece_alone_seconds']:.1f} s"
    )
    print(
        f"golden sentence: 30 -> {plain.stats['golden_tokens_after']} tokens: "
        f"{plain.stats['golden_pieces_after']}"
    )
    if args.unweighted:
        print(f"  without source_weights: {flat.stats['golden_tokens_after']} tokens: "
              f"{flat.stats['golden_pieces_after']}")
    shares = {s: v["sample_characters"] for s, v in (plain.training.sources or {}).items()}
    total = sum(shares.values()) or 1
    print("training sample, share of characters by source: " + ", ".join(
        f"{s} {c / total:.1%}" for s, c in sorted(shares.items(), key=lambda x: -x[1])))
    print(f"\nKLUE + KoBEST Korean ({len(texts)} sentences, never trained on):\n")
    print("| tokenizer | chars/token | tokens/sentence | byte-fallback share |")
    print("|---|---:|---:|---:|")
    for name, e in eff.items():
        print(
            f"| {name} | {e['chars_per_token']:.3f} | {e['tokens_per_sentence']:.1f} | "
            f"{e['byte_fallback_share']:.2%} |"
        )
    print("\nencode throughput, tokenizers batch (MB/s):")
    for lang, d in results["encode_mb_per_s"].items():  # type: ignore[union-attr]
        print(
            f"  {lang}: Llama-2 {d['llama2']:.1f}, expanded {d['expanded']:.1f} "
            f"(ratio {d['expanded'] / d['llama2']:.2f})"
        )
    for m, s in results["compare_seconds"].items():  # type: ignore[union-attr]
        print(f"  {m} on {args.compare_sentences} sentences: {s:.1f} s end to end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

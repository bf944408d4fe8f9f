"""`expand_vocab()`: train Korean pieces, merge them into the base, measure, report.

Inputs: a base tokenizer and a Korean corpus (shard folders, text or JSONL files). The
base is detected, not configured: SentencePiece BPE with byte fallback (Llama-2, Mistral
v1: a tokenizer.model, or a tokenizer/model folder holding one) goes through
`tokenizer.train` + `tokenizer.merge`; byte-level BPE (Llama-3's tiktoken file, a
tokenizer.json such as Qwen3's, a GGUF such as SmolLM2's) through `tokenizer.bytelevel`.
Output folder: `korean_bpe/` (tokenizer_training), `tokenizer/` (vocab_merge, the Hugging
Face tokenizer to use), `report/` (efficiency report, base vs expanded), with a sweep
`sweep/` (one merged tokenizer per size, `sweep.json`), for a byte-level base
`base_tokenizer/` (the base as tokenizer.json, converted where it was not one) and, when
a model is given, `model/` (embedding resize).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kovocab.artifacts import Owned, claims_output, exact
from kovocab.config import opt
from kovocab.corpus.texts import iter_corpus_texts
from kovocab.tokenizer.export import load_proto
from kovocab.tokenizer.load import Encoder, TokenizersEncoder
from kovocab.tokenizer.merge import (
    MergeResult,
    MergeVocabConfig,
    check_target_size,
    find_sentencepiece_model,
    merge_vocab,
)
from kovocab.tokenizer.train import (
    TokenizerTrainingConfig,
    TrainResult,
    train_tokenizer,
)
from kovocab.tokenizer.weights import WEIGHTS_DOC, SourceWeight

log = logging.getLogger(__name__)


def _owned() -> Owned:
    """What expand-vocab writes in out_dir: each sub-stage's folder, as that stage owns it."""
    from kovocab.model import resize
    from kovocab.report import measure
    from kovocab.tokenizer import merge, train
    from kovocab.tokenizer.bytelevel import BASE_DIR, BASE_OUTPUTS

    sweep = Owned("expand_vocab", files=exact("sweep.json"), dirs={r"\d+": merge.OUTPUTS})
    return Owned("expand_vocab", files=exact(HELD_OUT_FILE),
                 dirs={"korean_bpe": train.OUTPUTS, "tokenizer": merge.OUTPUTS, BASE_DIR: BASE_OUTPUTS,
                       "report": measure.OUTPUTS, "model": resize.OUTPUTS, "sweep": sweep})


HELD_OUT_FILE = "held_out_korean.txt"  # the report's held-out lines, beside report/ (not in it)
OUTPUTS = _owned()

GOLDEN_KO = "안녕하세요, 오늘은 날씨가 좋네요."


@dataclass(frozen=True)
class ExpandVocabConfig:
    """Train Korean pieces and merge them into the base in one step (recipe section expand_vocab)."""

    base: Path = opt(doc="base tokenizer: SentencePiece tokenizer.model, byte-level BPE tokenizer.json, "
                         "tiktoken ranks (Llama-3) or GGUF, or a folder holding one; the kind is detected")
    corpus: tuple[Path, ...] = opt(doc="Korean training text: shard folders, .txt or .jsonl files")
    out_dir: Path = opt(doc="output folder (korean_bpe/, tokenizer/, report/, model/)")
    target_vocab_size: int = opt(46336, "vocabulary size after the merge (ids in use, specials included)")
    method: Literal["bpe", "morpheme-bpe"] = opt("bpe", "plain or Kiwi morpheme-aware BPE")
    korean_vocab_size: int | None = opt(
        None, "Korean model size (byte-level: merges learned); default leaves a 25% reserve")
    max_sentences: int = opt(2_000_000, "sentences sampled for training")
    source_weights: Mapping[str, SourceWeight] | None = opt(None, WEIGHTS_DOC)
    eval_texts: tuple[Path, ...] = opt((), "held-out Korean text; default: shard eval splits")
    model: Path | None = opt(None, "Hugging Face Llama folder whose embeddings to resize")
    report: bool = opt(True, "write the efficiency report, base vs expanded")
    seed: int = opt(0, "sampling seed")
    sweep: tuple[int, ...] = opt(
        (), "also cut the one Korean model at these numbers of new pieces and measure each "
        "(e.g. [4096, 8192, 14336, 23296, 32768]); written to sweep/ and drawn in the report"
    )

    def check(self) -> list[str]:
        bad = [n for n in self.sweep if n <= 0]
        return [f"sweep: sizes are numbers of new pieces and must be positive, got {bad}"] if bad else []


def summary_lines(cfg: ExpandVocabConfig, res: ExpandResult) -> Iterator[str]:
    """What `kovocab expand-vocab` prints: the tokenizer, its token counts, the sweep, the report."""
    s = res.stats
    yield f"tokenizer ({res.merge.vocab_size} pieces): {res.tokenizer_dir}"
    yield f"  '{s['golden_sentence']}': {s['golden_tokens_before']} -> {s['golden_tokens_after']} tokens"
    if "korean_chars_per_token_after" in s:
        yield (f"  held-out Korean: {s['korean_tokens_per_sentence_before']:.1f} -> "
               f"{s['korean_tokens_per_sentence_after']:.1f} tokens/sentence, "
               f"{s['korean_chars_per_token_before']:.2f} -> "
               f"{s['korean_chars_per_token_after']:.2f} chars/token")
    for row in res.sweep:
        yield (f"  sweep +{row['new_pieces']:,} ({row['vocab_size']:,} pieces): "
               f"{row['korean_tokens_per_sentence'] or float('nan'):.2f} tokens/sentence, "
               f"{row['korean_chars_per_token'] or float('nan'):.3f} chars/token, "
               f"golden {row['golden_tokens']}")
    yield from [f"report: {res.report_dir}"] if res.report_dir else []
    yield from [f"resized model: {res.model_dir}"] if res.model_dir else []


def expand_vocab_from_config(cfg: ExpandVocabConfig) -> ExpandResult:
    """`expand_vocab` driven by a recipe section."""
    return expand_vocab(
        base=cfg.base,
        corpus=cfg.corpus,
        out_dir=cfg.out_dir,
        target_vocab_size=cfg.target_vocab_size,
        method=cfg.method,
        korean_vocab_size=cfg.korean_vocab_size,
        max_sentences=cfg.max_sentences,
        source_weights=cfg.source_weights,
        eval_texts=cfg.eval_texts or None,
        model=cfg.model,
        report=cfg.report,
        seed=cfg.seed,
        sweep=cfg.sweep,
    )


@dataclass(frozen=True)
class ExpandResult:
    """Paths and headline figures of one vocabulary expansion."""

    out_dir: Path
    tokenizer_dir: Path
    korean_model: Path
    training: TrainResult
    merge: MergeResult
    stats: dict[str, Any] = field(default_factory=dict)
    report_dir: Path | None = None
    model_dir: Path | None = None
    sweep: tuple[dict[str, Any], ...] = ()


def korean_vocab_size_for(new_pieces: int) -> int:
    """Korean model size that leaves a reserve of candidates for unreachable ones."""
    return max(1000, int(math.ceil((new_pieces * 1.25 + 2000) / 1000.0)) * 1000)


@claims_output(OUTPUTS, "expand_vocab.out_dir")
def expand_vocab(
    base: str | Path,
    corpus: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    target_vocab_size: int = 46336,
    method: Literal["bpe", "morpheme-bpe"] = "bpe",
    korean_vocab_size: int | None = None,
    max_sentences: int = 2_000_000,
    source_weights: Mapping[str, SourceWeight] | None = None,
    eval_texts: str | Path | Sequence[str | Path] | None = None,
    model: str | Path | None = None,
    report: bool = True,
    seed: int = 0,
    sweep: Sequence[int] = (),
) -> ExpandResult:
    """Grow `base` to `target_vocab_size` with Korean BPE pieces learned from `corpus`.

    `eval_texts` (held-out Korean, same formats as `corpus`) gives the before/after
    figures; by default the eval split of any shard folder in `corpus` is used.
    With `model` (a Hugging Face Llama folder) the embeddings are resized too.
    `source_weights` (source name -> SourceWeight) sets how much of each corpus source
    the training sample takes; the korean_bpe manifest records it.
    `sweep` (numbers of new pieces) cuts the same Korean model at each size: see
    `sweep_sizes`; the rows are in `result.sweep`, `sweep/sweep.json` and the report.
    """
    out = Path(out_dir)
    corpus_paths = _paths(corpus)
    if is_byte_level_base(base):
        return _expand_byte_level(
            base, corpus_paths, out, target_vocab_size, method, korean_vocab_size, max_sentences,
            source_weights, eval_texts, model, report, seed, sweep,
        )
    base_model = find_sentencepiece_model(base, "base")
    base_size = len(load_proto(base_model).pieces)
    check_target_size(target_vocab_size, base_size, "expand_vocab.target_vocab_size")  # before training
    if model is not None:  # a broken checkpoint fails now, not after the tokenizer work
        from kovocab.model.resize import check_model_folder

        check_model_folder(model, "expand_vocab.model", base_rows=base_size)
    if korean_vocab_size is None:
        # One Korean model serves every size: train it for the largest.
        korean_vocab_size = korean_vocab_size_for(max([target_vocab_size - base_size, *sweep]))
    training = train_tokenizer(
        TokenizerTrainingConfig(
            corpus=corpus_paths,
            out_dir=out / "korean_bpe",
            method=method,
            vocab_size=korean_vocab_size,
            max_sentences=max_sentences,
            seed=seed,
            source_weights=source_weights,
        )
    )
    merged = merge_vocab(
        MergeVocabConfig(
            base=base_model,
            korean_model=training.model_path,
            out_dir=out / "tokenizer",
            target_vocab_size=target_vocab_size,
        )
    )
    held_out = _held_out_texts(corpus_paths, eval_texts)
    stats = compare_tokenizers(base_model, merged.tokenizer_model, held_out)
    stats.update(merged.stats)
    rows = sweep_sizes(base_model, training.model_path, sweep, out / "sweep", held_out) if sweep else ()
    result = ExpandResult(
        out_dir=out,
        tokenizer_dir=merged.out_dir,
        korean_model=training.model_path,
        training=training,
        merge=merged,
        stats=stats,
        sweep=tuple(rows),
    )
    if report:
        result = _with_report(result, base_model, held_out)
    if model is not None:
        result = _with_model(result, model, base_model)
    log.info(
        "expanded %s to %d pieces: Korean tokens/sentence %.1f -> %.1f",
        base_model, merged.vocab_size,
        stats.get("korean_tokens_per_sentence_before", float("nan")),
        stats.get("korean_tokens_per_sentence_after", float("nan")),
    )
    return result


def is_byte_level_base(base: str | Path) -> bool:
    """Whether `base` is a byte-level BPE tokenizer (tokenizer.json, tiktoken ranks, GGUF).

    A folder with a SentencePiece tokenizer.model (a Llama-2 checkpoint, which also holds a
    tokenizer.json) stays on the SentencePiece path, exactly as before.
    """
    from kovocab.tokenizer.bytelevel_base import sniff

    p = Path(base)
    if not p.exists():
        return False  # the SentencePiece path says what is missing
    if p.is_dir():
        model = p / "tokenizer.model"
        if model.is_file() and sniff(model) is None:
            return False
    return sniff(p) is not None


def _expand_byte_level(
    base_path: str | Path, corpus_paths: tuple[Path, ...], out: Path, target_vocab_size: int,
    method: str, korean_vocab_size: int | None, max_sentences: int,
    source_weights: Mapping[str, SourceWeight] | None, eval_texts: str | Path | Sequence[str | Path] | None,
    model: str | Path | None, report: bool, seed: int, sweep: Sequence[int],
) -> ExpandResult:
    """`expand_vocab` for a byte-level BPE base: see `tokenizer.bytelevel`."""
    import time

    from kovocab.artifacts import write_manifest
    from kovocab.tokenizer import bytelevel as bl
    from kovocab.tokenizer.bytelevel_base import load_byte_level_base
    from kovocab.tokenizer.train import sample_training_text

    start = time.perf_counter()
    base = load_byte_level_base(base_path, "expand_vocab.base")
    check_target_size(target_vocab_size, base.size, "expand_vocab.target_vocab_size")
    n_new = target_vocab_size - base.size
    base_dir = out / bl.BASE_DIR
    if model is not None:
        from kovocab.model.resize import check_model_folder

        check_model_folder(model, "expand_vocab.model", base_rows=base.size)
    n_merges = korean_vocab_size or korean_vocab_size_for(max([n_new, *sweep]))
    sentences, seen, mix, skipped = sample_training_text(
        corpus_paths, source_weights, max_sentences, seed, "text", "expand_vocab.corpus"
    )
    candidates, words, train_stats = bl.train_candidates(base, sentences, n_merges, method)
    inputs = {str(p): _input_digest(p) for p in (*corpus_paths, base.source)}
    korean_file = bl.write_candidates(
        out / "korean_bpe", candidates,
        {"sentences": len(sentences), "sentences_seen": seen, "merges": n_merges, "skipped_records": skipped,
         **train_stats}, inputs, **mix,
    )
    training = TrainResult(korean_file, n_merges, len(sentences), seen, time.perf_counter() - start,
                           mix["sources"])
    bl.write_base_folder(base_dir, base)
    write_manifest(base_dir, "expand_vocab", {"form": base.form, "size": base.size},
                   inputs={str(base.source): _input_digest(base.source)})
    merged, expanded_tok = _byte_level_merge(bl, base, candidates, words, target_vocab_size,
                                             out / "tokenizer", inputs)
    held_out = _held_out_texts(corpus_paths, eval_texts)
    base_enc = TokenizersEncoder(base.tokenizer(), base_dir / "tokenizer.json", base.spec)
    after_enc = TokenizersEncoder(expanded_tok, merged.tokenizer_json, base.spec)
    stats = compare_encoders(base_enc, after_enc, held_out)
    stats.update(merged.stats)
    stats["base_form"] = base.form
    rows: list[dict[str, Any]] = []
    if sweep:
        cuts = [_byte_level_merge(bl, base, candidates, words, base.size + n,
                                  out / "sweep" / str(base.size + n), inputs) for n in sorted(set(sweep))]
        rows = _sweep_rows(base_enc, cuts, held_out, out / "sweep", korean_file)
    result = ExpandResult(out_dir=out, tokenizer_dir=merged.out_dir, korean_model=korean_file,
                          training=training, merge=merged, stats=stats, sweep=tuple(rows))
    if report:
        result = _with_report(result, base_dir, held_out)
    if model is not None:
        result = _with_model(result, model, base_dir)
    log.info("expanded %s (%s) to %d tokens: Korean tokens/sentence %.1f -> %.1f", base.source, base.form,
             merged.vocab_size, stats.get("korean_tokens_per_sentence_before", float("nan")),
             stats.get("korean_tokens_per_sentence_after", float("nan")))
    return result


def _byte_level_merge(bl: Any, base: Any, candidates: Any, words: Any, target: int, out: Path,
                      inputs: dict[str, str]) -> tuple[MergeResult, Any]:
    """Append the first reachable candidates up to `target` ids; write the tokenizer folder."""
    from kovocab.artifacts import check_output, write_manifest
    from kovocab.tokenizer import merge

    check_output(out, merge.OUTPUTS, "expand_vocab.out_dir")
    selection = bl.select_merges(base, candidates, target - base.size, words)
    bl.write_tokenizer_folder(out, base, selection, None)
    vocab_size = base.size + len(selection.new_tokens)
    write_manifest(out, "vocab_merge",
                   {"base_size": base.size, "vocab_size": vocab_size, "new_tokens": len(selection.new_tokens),
                    "new_merges": len(selection.spec["model"]["merges"]) - len(base.spec["model"]["merges"]),
                    "replaced_unreachable": selection.replaced_unreachable,
                    "candidates_not_usable": selection.dropped, "base_form": base.form},
                   inputs=inputs)
    return MergeResult(out, out / "tokenizer.json", out / "tokenizer.json", base.size, vocab_size,
                       len(selection.new_tokens), selection.replaced_unreachable, ()), selection.tokenizer


def _input_digest(path: Path) -> str:
    from kovocab.artifacts import sha256_file

    if path.is_dir():
        manifest = path / "manifest.json"
        return sha256_file(manifest) if manifest.is_file() else ""
    return sha256_file(path)


def compare_encoders(before: Encoder, after: Encoder, texts: list[str]) -> dict[str, Any]:
    """`compare_tokenizers` for any two loaded tokenizers (`tokenizer.load`)."""
    stats: dict[str, Any] = {
        "golden_sentence": GOLDEN_KO,
        "golden_tokens_before": len(before.encode(GOLDEN_KO)),
        "golden_tokens_after": len(after.encode(GOLDEN_KO)),
        "golden_pieces_after": after.pieces(after.encode(GOLDEN_KO)),
    }
    if texts:
        chars = sum(len(t) for t in texts)
        for name, enc in (("before", before), ("after", after)):
            n = sum(len(enc.encode(t)) for t in texts)
            stats[f"korean_tokens_per_sentence_{name}"] = n / len(texts)
            stats[f"korean_chars_per_token_{name}"] = chars / n
        stats["held_out_sentences"] = len(texts)
    return stats


_BYTE_LEVEL = {"model": {}, "pre_tokenizer": {"type": "ByteLevel"}}  # how TokenizersEncoder spots byte-level


def _sweep_rows(base: Encoder, cuts: list[tuple[MergeResult, Any]], texts: list[str], out_dir: Path,
                korean_file: Path) -> list[dict[str, Any]]:
    from kovocab.artifacts import write_json

    rows = []
    for merged, tok in cuts:
        figures = compare_encoders(base, TokenizersEncoder(tok, merged.tokenizer_json, _BYTE_LEVEL), texts)
        rows.append(_sweep_row(merged.new_pieces, merged, figures))
    write_json(out_dir / "sweep.json",
               {"korean_model": str(korean_file), "base": str(base.path), "rows": rows})
    return rows


def _paths(value: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    if isinstance(value, str | Path):
        return (Path(value),)
    return tuple(Path(v) for v in value)


def _held_out_texts(
    corpus: tuple[Path, ...], eval_texts: str | Path | Sequence[str | Path] | None
) -> list[str]:
    """Held-out Korean lines: `eval_texts`, else the eval split of the shard folders in `corpus`."""
    sources = _paths(eval_texts) if eval_texts is not None else tuple(p for p in corpus if p.is_dir())
    docs = iter_corpus_texts(sources, split="eval", what="expand_vocab.eval_texts")
    lines = (line.strip() for d in docs for line in d.split("\n") if line.strip())
    return list(itertools.islice(lines, 20000))


def compare_tokenizers(base_model: Path, expanded_model: Path, texts: list[str]) -> dict[str, Any]:
    """Headline figures: the golden sentence and held-out Korean, before and after."""
    import sentencepiece as spm

    before = spm.SentencePieceProcessor(model_file=str(base_model))
    after = spm.SentencePieceProcessor(model_file=str(expanded_model))
    stats: dict[str, Any] = {
        "golden_sentence": GOLDEN_KO,
        "golden_tokens_before": len(before.encode(GOLDEN_KO)),
        "golden_tokens_after": len(after.encode(GOLDEN_KO)),
        "golden_pieces_after": after.encode(GOLDEN_KO, out_type=str),
    }
    if texts:
        chars = sum(len(t) for t in texts)
        for name, sp in (("before", before), ("after", after)):
            ids = sp.encode(texts)
            n = sum(len(x) for x in ids)
            stats[f"korean_tokens_per_sentence_{name}"] = n / len(texts)
            stats[f"korean_chars_per_token_{name}"] = chars / n
        stats["held_out_sentences"] = len(texts)
    return stats


def sweep_sizes(
    base_model: Path, korean_model: Path, sizes: Sequence[int], out_dir: Path, texts: list[str]
) -> list[dict[str, Any]]:
    """Cut one Korean model at each number of new pieces; measure each cut on `texts`.

    Each cut is a full `merge_vocab` (same guarantees: base ids untouched, English as the
    base, every new piece reachable) of the same candidate list, so the K-piece cut is
    the first K usable candidates in order. `sweep/<vocab size>/` holds each tokenizer,
    `sweep/sweep.json` the rows (`pieces_prefix_of_largest` says whether each cut's
    pieces are the first pieces of the largest cut, which is what a cut promises).
    """
    from kovocab.artifacts import write_json

    sizes = sorted(set(sizes))
    base_size = len(load_proto(base_model).pieces)
    cuts = []
    for n_new in sizes:
        merged = merge_vocab(
            MergeVocabConfig(base=base_model, korean_model=korean_model,
                             out_dir=out_dir / str(base_size + n_new),
                             target_vocab_size=base_size + n_new)
        )
        cuts.append(merged)
    largest = load_proto(cuts[-1].tokenizer_model).pieces
    rows = []
    for n_new, merged in zip(sizes, cuts, strict=True):
        figures = compare_tokenizers(base_model, merged.tokenizer_model, texts)
        pieces = load_proto(merged.tokenizer_model).pieces
        rows.append({
            **_sweep_row(n_new, merged, figures),
            "pieces_prefix_of_largest": all(
                a.piece == b.piece for a, b in zip(pieces[base_size:], largest[base_size:], strict=False)
            ),
        })
        log.info("sweep: +%d pieces (%d): %.2f chars/token", n_new, merged.vocab_size,
                 rows[-1]["korean_chars_per_token"] or float("nan"))
    write_json(out_dir / "sweep.json", {"korean_model": str(korean_model), "base": str(base_model),
                                        "rows": rows})
    return rows


def _sweep_row(n_new: int, merged: MergeResult, figures: dict[str, Any]) -> dict[str, Any]:
    """One row of sweep.json: a cut's size and its figures on the held-out text."""
    return {
        "new_pieces": n_new,
        "vocab_size": merged.vocab_size,
        "tokenizer": str(merged.out_dir),
        "golden_tokens": figures["golden_tokens_after"],
        "korean_tokens_per_sentence": figures.get("korean_tokens_per_sentence_after"),
        "korean_chars_per_token": figures.get("korean_chars_per_token_after"),
        "base_tokens_per_sentence": figures.get("korean_tokens_per_sentence_before"),
        "held_out_sentences": figures.get("held_out_sentences", 0),
        "replaced_unreachable": merged.replaced_unreachable,
    }


def _with_report(result: ExpandResult, base_model: Path, texts: list[str]) -> ExpandResult:
    """Write the efficiency report (base vs expanded) on the held-out lines."""
    from kovocab.report.measure import efficiency_report

    if not texts:
        return result
    from kovocab.artifacts import atomic_write_text

    text_file = result.out_dir / HELD_OUT_FILE
    atomic_write_text(text_file, "\n".join(texts) + "\n")
    rep = efficiency_report(
        tokenizers={"base": str(base_model), "expanded": str(result.tokenizer_dir)},
        texts={"korean_held_out": str(text_file)},
        out_dir=result.out_dir / "report",
        base="base",
        examples=[GOLDEN_KO],
        sweep=result.sweep,
    )
    return ExpandResult(**{**result.__dict__, "report_dir": Path(rep.out_dir)})


def _with_model(result: ExpandResult, model: str | Path, base_model: Path) -> ExpandResult:
    from kovocab.model.resize import resize_embeddings

    resized = resize_embeddings(
        model_dir=model,
        tokenizer_dir=result.tokenizer_dir,
        out_dir=result.out_dir / "model",
        base_tokenizer=base_model,
    )
    return ExpandResult(**{**result.__dict__, "model_dir": Path(resized.out_dir)})

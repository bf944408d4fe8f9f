"""`expand_vocab()`: train Korean pieces, merge them into the base, measure, report.

Inputs: a base SentencePiece BPE tokenizer (file, tokenizer folder or model folder)
and a Korean corpus (shard folders, text or JSONL files). Output folder:
`korean_bpe/` (tokenizer_training), `tokenizer/` (vocab_merge, the Hugging Face
tokenizer to use), `report/` (efficiency report, base vs expanded) and, when a model
is given, `model/` (embedding resize).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kovocab.config import opt
from kovocab.tokenizer_export import load_proto
from kovocab.tokenizer_training import (
    TokenizerTrainingConfig,
    TrainResult,
    iter_corpus_texts,
    train_tokenizer,
)
from kovocab.vocab_merge import MergeResult, MergeVocabConfig, find_sentencepiece_model, merge_vocab

log = logging.getLogger(__name__)

GOLDEN_KO = "안녕하세요, 오늘은 날씨가 좋네요."


@dataclass(frozen=True)
class ExpandVocabConfig:
    """Train Korean pieces and merge them into the base in one step (recipe section expand_vocab)."""

    base: Path = opt(doc="base tokenizer: tokenizer.model, or a tokenizer/model folder holding one")
    corpus: tuple[Path, ...] = opt(doc="Korean training text: shard folders, .txt or .jsonl files")
    out_dir: Path = opt(doc="output folder (korean_bpe/, tokenizer/, report/, model/)")
    target_vocab_size: int = opt(46336, "vocabulary size after the merge")
    method: Literal["bpe", "morpheme-bpe"] = opt("bpe", "plain or Kiwi morpheme-aware BPE")
    korean_vocab_size: int | None = opt(None, "Korean model size; default leaves a 25% reserve")
    max_sentences: int = opt(2_000_000, "sentences sampled for training")
    eval_texts: tuple[Path, ...] = opt((), "held-out Korean text; default: shard eval splits")
    model: Path | None = opt(None, "Hugging Face Llama folder whose embeddings to resize")
    report: bool = opt(True, "write the efficiency report, base vs expanded")
    seed: int = opt(0, "sampling seed")


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
        eval_texts=cfg.eval_texts or None,
        model=cfg.model,
        report=cfg.report,
        seed=cfg.seed,
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


def korean_vocab_size_for(new_pieces: int) -> int:
    """Korean model size that leaves a reserve of candidates for unreachable ones."""
    return max(1000, int(math.ceil((new_pieces * 1.25 + 2000) / 1000.0)) * 1000)


def expand_vocab(
    base: str | Path,
    corpus: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    target_vocab_size: int = 46336,
    method: Literal["bpe", "morpheme-bpe"] = "bpe",
    korean_vocab_size: int | None = None,
    max_sentences: int = 2_000_000,
    eval_texts: str | Path | Sequence[str | Path] | None = None,
    model: str | Path | None = None,
    report: bool = True,
    seed: int = 0,
) -> ExpandResult:
    """Grow `base` to `target_vocab_size` with Korean BPE pieces learned from `corpus`.

    `eval_texts` (held-out Korean, same formats as `corpus`) gives the before/after
    figures; by default the eval split of any shard folder in `corpus` is used.
    With `model` (a Hugging Face Llama folder) the embeddings are resized too.
    """
    out = Path(out_dir)
    corpus_paths = _paths(corpus)
    base_model = find_sentencepiece_model(base, "base")
    base_size = len(load_proto(base_model).pieces)
    if korean_vocab_size is None:
        korean_vocab_size = korean_vocab_size_for(target_vocab_size - base_size)
    training = train_tokenizer(
        TokenizerTrainingConfig(
            corpus=corpus_paths,
            out_dir=out / "korean_bpe",
            method=method,
            vocab_size=korean_vocab_size,
            max_sentences=max_sentences,
            seed=seed,
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
    result = ExpandResult(
        out_dir=out,
        tokenizer_dir=merged.out_dir,
        korean_model=training.model_path,
        training=training,
        merge=merged,
        stats=stats,
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


def _with_report(result: ExpandResult, base_model: Path, texts: list[str]) -> ExpandResult:
    """Write the efficiency report (base vs expanded) on the held-out lines."""
    from kovocab.report import efficiency_report

    if not texts:
        return result
    from kovocab.artifacts import atomic_write_text

    text_file = result.out_dir / "report" / "held_out_korean.txt"
    atomic_write_text(text_file, "\n".join(texts) + "\n")
    rep = efficiency_report(
        tokenizers={"base": str(base_model), "expanded": str(result.tokenizer_dir)},
        texts={"korean_held_out": str(text_file)},
        out_dir=result.out_dir / "report",
        base="base",
        examples=[GOLDEN_KO],
    )
    return ExpandResult(**{**result.__dict__, "report_dir": Path(rep.out_dir)})


def _with_model(result: ExpandResult, model: str | Path, base_model: Path) -> ExpandResult:
    from kovocab.embeddings import resize_embeddings

    resized = resize_embeddings(
        model_dir=model,
        tokenizer_dir=result.tokenizer_dir,
        out_dir=result.out_dir / "model",
        base_tokenizer=base_model,
    )
    return ExpandResult(**{**result.__dict__, "model_dir": Path(resized.out_dir)})

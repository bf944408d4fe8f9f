"""Train Korean BPE pieces with SentencePiece, plain or morpheme-aware (Kiwi).

Inputs: kovocab shard folders, plain text (one sentence per line) or JSONL files,
optionally gzip/xz-compressed. Output: `korean_bpe.model`/`.vocab`, `config.yaml`,
`manifest.json`. Morpheme-aware training marks Kiwi morpheme boundaries with
SentencePiece's `pretokenization_delimiter`, so merges never cross a morpheme
(Park et al. 2020, "An Empirical Study of Tokenization Strategies for Various Korean
NLP Tasks") while the pieces stay valid on raw text: encoding never runs Kiwi.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kovocab.artifacts import (
    Owned,
    atomic_write_bytes,
    claims_output,
    exact,
    sha256_file,
    write_config,
    write_manifest,
)
from kovocab.config import opt
from kovocab.corpus.texts import collect_skipped, skipped_summary
from kovocab.errors import InputError, MissingDependencyError
from kovocab.tokenizer.weights import WEIGHTS_DOC, SourceWeight, WeightedCorpus

log = logging.getLogger(__name__)

# Marks morpheme boundaries for sentencepiece; a private-use character no text uses.
DELIMITER = "\ue000"
MODEL_NAME = "korean_bpe"
# What it writes in out_dir (korean_merges.json: the byte-level path, tokenizer.bytelevel).
OUTPUTS = Owned("tokenizer_training", files=exact(f"{MODEL_NAME}.model", "korean_merges.json"))


@dataclass(frozen=True)
class TokenizerTrainingConfig:
    """Train a Korean SentencePiece BPE model whose pieces vocab_merge appends."""

    corpus: tuple[Path, ...] = opt(doc="shard folders, .txt or .jsonl files (.gz/.xz too)")
    out_dir: Path = opt(doc="output folder for korean_bpe.model")
    method: Literal["bpe", "morpheme-bpe"] = opt(
        "bpe", "plain BPE, or BPE whose merges stop at Kiwi morpheme boundaries"
    )
    vocab_size: int = opt(20000, "pieces in the Korean model (more than the pieces to append)")
    text_field: str = opt("text", "field holding the text in .jsonl inputs")
    max_sentences: int = opt(2_000_000, "sentences sampled (reservoir, seeded) for training")
    character_coverage: float = opt(0.9995, "share of characters covered; the rest are bytes")
    max_piece_length: int = opt(16, "longest piece in characters")
    split_digits: bool = opt(True, "one digit per piece, as Llama-2 does")
    max_sentence_bytes: int = opt(4192, "longer sentences are skipped by sentencepiece")
    seed: int = opt(0, "seed of the sentence sample and of source_weights")
    num_threads: int = opt(2, "sentencepiece trainer threads")
    source_weights: Mapping[str, SourceWeight] | None = opt(None, WEIGHTS_DOC)

    def check(self) -> list[str]:
        problems = []
        if not self.corpus:
            problems.append("corpus: give at least one shard folder or text file")
        if self.vocab_size < 1000:
            problems.append(f"vocab_size: {self.vocab_size} is too small for Korean (>= 1000)")
        if not 0.9 <= self.character_coverage <= 1.0:
            problems.append("character_coverage: must be within [0.9, 1.0]")
        if self.max_sentences <= 0:
            problems.append("max_sentences: must be positive")
        return problems


@dataclass(frozen=True)
class TrainResult:
    """The trained Korean model and what it was trained on."""

    model_path: Path
    vocab_size: int
    sentences: int
    sentences_seen: int
    seconds: float
    sources: dict[str, Any] | None = None


def sample_sentences(texts: Iterable[str], k: int, seed: int) -> tuple[list[str], int]:
    """A seeded reservoir sample of `k` non-empty lines; returns it and the lines seen."""
    sample, _, seen = sample_labelled_sentences((("", t) for t in texts), k, seed)
    return sample, seen


def sample_labelled_sentences(
    documents: Iterable[tuple[str, str]], k: int, seed: int
) -> tuple[list[str], list[str], int]:
    """`sample_sentences` over (source, text) documents: the lines, each line's source, lines seen."""
    rng = random.Random(seed)
    sample: list[str] = []
    labels: list[str] = []
    seen = 0
    for source, text in documents:
        for line in text.split("\n"):
            line = line.strip().replace(DELIMITER, "")
            if not line:
                continue
            seen += 1
            if len(sample) < k:
                sample.append(line)
                labels.append(source)
            else:
                j = rng.randrange(seen)
                if j < k:
                    sample[j] = line
                    labels[j] = source
    return sample, labels, seen


def mark_morphemes(sentences: list[str], num_workers: int = 2) -> list[str]:
    """Insert DELIMITER at Kiwi morpheme boundaries inside words.

    Boundaries are token start offsets; a token that overlaps the previous one
    (했 = 하 + 었) starts no boundary, so characters are never split or changed.
    """
    try:
        from kiwipiepy import Kiwi
    except ImportError as exc:
        raise MissingDependencyError("kiwipiepy", "kiwi", "morpheme-aware BPE") from exc
    kiwi = Kiwi(num_workers=max(1, num_workers))
    out = []
    for sentence, tokens in zip(sentences, kiwi.tokenize(sentences), strict=True):
        cuts = []
        end = 0
        for tok in tokens:
            start = tok.start
            if start >= end and start > 0 and not sentence[start - 1].isspace():
                cuts.append(start)
            end = max(end, tok.start + tok.len)
        if not cuts:
            out.append(sentence)
            continue
        parts, prev = [], 0
        for c in cuts:
            parts.append(sentence[prev:c])
            prev = c
        parts.append(sentence[prev:])
        out.append(DELIMITER.join(parts))
    return out


def sample_training_text(
    corpus_paths: Iterable[Path], source_weights: Mapping[str, SourceWeight] | None, max_sentences: int,
    seed: int, text_field: str, what: str,
) -> tuple[list[str], int, dict[str, Any], dict[str, Any]]:
    """The seeded, weighted sentence sample a Korean tokenizer trains on.

    Returns the sentences, the lines seen, the mix manifest (per source: documents,
    characters, factor, and the sample's sentences and characters) and the skipped records.
    """
    corpus = WeightedCorpus(tuple(corpus_paths), source_weights, seed, text_field=text_field, what=what)
    with collect_skipped() as skipped_files:
        sentences, labels, seen = sample_labelled_sentences(corpus.labelled(), max_sentences, seed)
    skipped = skipped_summary(skipped_files)
    if not sentences:
        raise InputError(f"{what}: no text found in {[str(p) for p in corpus_paths]}")
    mix = corpus.manifest()
    for entry in mix["sources"].values():
        entry["sample_sentences"] = entry["sample_characters"] = 0
    for source, line in zip(labels, sentences, strict=True):
        mix["sources"][source]["sample_sentences"] += 1
        mix["sources"][source]["sample_characters"] += len(line)
    return sentences, seen, mix, skipped


def summary_lines(cfg: TokenizerTrainingConfig, res: TrainResult) -> list[str]:
    """What `kovocab train-tokenizer` prints."""
    return [f"Korean BPE ({res.vocab_size} pieces, {res.sentences} sentences): {res.model_path}"]


@claims_output(OUTPUTS, "tokenizer_training.out_dir")
def train_tokenizer(cfg: TokenizerTrainingConfig) -> TrainResult:
    """Train the Korean SentencePiece BPE model described by `cfg`."""
    import sentencepiece as spm

    start = time.perf_counter()
    sentences, seen, mix, skipped = sample_training_text(
        cfg.corpus, cfg.source_weights, cfg.max_sentences, cfg.seed, cfg.text_field,
        "tokenizer_training.corpus",
    )
    log.info("training %s on %d of %d sentences", cfg.method, len(sentences), seen)
    extra: dict[str, Any] = {}
    if cfg.method == "morpheme-bpe":
        sentences = mark_morphemes(sentences, cfg.num_threads)
        extra["pretokenization_delimiter"] = DELIMITER
    model = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="bpe",
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=True,
            split_digits=cfg.split_digits,
            max_sentencepiece_length=cfg.max_piece_length,
            max_sentence_length=cfg.max_sentence_bytes,
            # Llama-2's own settings, so the pieces mean the same thing there.
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            input_sentence_size=0,
            num_threads=cfg.num_threads,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            minloglevel=2,
            **extra,
        )
    except RuntimeError as exc:
        raise InputError(f"tokenizer_training: sentencepiece could not train: {exc}") from exc
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{MODEL_NAME}.model"
    atomic_write_bytes(path, model.getvalue())
    seconds = time.perf_counter() - start
    result = TrainResult(path, cfg.vocab_size, len(sentences), seen, seconds, mix["sources"])
    write_config(out, "tokenizer_training", cfg)
    write_manifest(
        out,
        "tokenizer_training",
        {"sentences": len(sentences), "sentences_seen": seen, "vocab_size": cfg.vocab_size,
         "skipped_records": skipped},
        inputs={str(p): _digest(Path(p)) for p in cfg.corpus},
        **mix,
    )
    return result


def _digest(path: Path) -> str:
    if path.is_dir():
        manifest = path / "manifest.json"
        return sha256_file(manifest) if manifest.is_file() else ""
    return sha256_file(path)

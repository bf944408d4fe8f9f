"""Bits per byte of held-out text under a causal LM and its tokenizer: the step-0 check.

Inputs: Hugging Face model folders, each with its tokenizer (by default its own
tokenizer.model, else its tokenizer.json: `scoring.text_ids`), and text (.txt lines,
.jsonl "text", shard folders' eval split).
bits/byte = the documents' total NLL in bits over their UTF-8 bytes; it does not depend
on the tokenizer, so base model + base tokenizer and resized model + expanded tokenizer
compare directly. Long documents are scored with a sliding window over the context.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kovocab.config import opt
from kovocab.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BpbConfig:
    """Bits per byte of a text set under one or more (model, tokenizer) pairs."""

    models: tuple[Path, ...] = opt(doc="model folders, e.g. the base model and the resized one")
    texts: tuple[Path, ...] = opt(doc="held-out text: .txt (a document per line), .jsonl, shard folders")
    tokenizers: tuple[Path, ...] = opt((), "paired with models in order; the rest use their folder's "
                                                  "tokenizer.model, else tokenizer.json")
    max_documents: int = opt(1000, "score at most this many non-empty documents")
    max_length: int | None = opt(None, "window in tokens; default the model's max_position_embeddings")
    stride: int | None = opt(None, "tokens the window advances; default half the window")
    batch_size: int = opt(8, "documents that fit one window are scored this many at a time")
    dtype: Literal["auto", "float32", "bfloat16"] = opt("float32", "weights dtype while scoring")
    device: str = opt("auto", "cuda when available, else cpu; or any torch device")
    out: Path | None = opt(None, "also write the figures to this JSON file")

    def check(self) -> list[str]:
        problems = []
        if len(self.tokenizers) > len(self.models):
            problems.append(f"tokenizers: {len(self.tokenizers)} given for {len(self.models)} models")
        if self.max_length is not None and self.max_length < 2:
            problems.append("max_length: must be 2 or more")
        if self.stride is not None and self.stride < 1:
            problems.append("stride: must be 1 or more")
        if self.max_documents < 1 or self.batch_size < 1:
            problems.append("max_documents, batch_size: must be 1 or more")
        return problems


@dataclass(frozen=True)
class BpbResult:
    """The NLL of one (model, tokenizer) pair on the documents."""

    model: Path
    tokenizer: Path
    documents: int
    bytes: int
    tokens: int
    nll_bits: float

    @property
    def bits_per_byte(self) -> float:
        return self.nll_bits / self.bytes if self.bytes else math.nan

    @property
    def bits_per_token(self) -> float:
        return self.nll_bits / self.tokens if self.tokens else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "tokenizer": str(self.tokenizer), "documents": self.documents,
                "bytes": self.bytes, "tokens": self.tokens, "nll_bits": self.nll_bits,
                "bits_per_byte": self.bits_per_byte, "bits_per_token": self.bits_per_token}


def read_documents(paths: Sequence[Path], limit: int, what: str = "bpb.texts") -> list[str]:
    """Up to `limit` non-empty documents, in order; shard folders give their eval split."""
    from kovocab.corpus.texts import iter_corpus_texts

    out = []
    for doc in iter_corpus_texts(paths, split="eval", what=what):
        if doc.strip():
            out.append(doc)
            if len(out) == limit:
                break
    if not out:
        raise InputError(f"{what}: no non-empty documents in {', '.join(map(str, paths))}")
    return out


def summary_lines(cfg: BpbConfig, results: Sequence[BpbResult]) -> Iterator[str]:
    """What `kovocab bpb` prints: one row per (model, tokenizer), compared with the first."""
    first = results[0]
    yield f"{first.documents} documents, {first.bytes} UTF-8 bytes"
    yield f"{'bits/byte':>10} {'vs first':>9} {'tokens':>9} {'bits/token':>10}  model + tokenizer"
    for r in results:
        yield (f"{r.bits_per_byte:10.4f} {r.bits_per_byte - first.bits_per_byte:+9.4f} {r.tokens:9d} "
               f"{r.bits_per_token:10.4f}  {r.model} + {r.tokenizer}")
    yield from [f"figures: {cfg.out}"] if cfg.out is not None else []


def compare_bits_per_byte(cfg: BpbConfig) -> list[BpbResult]:
    """Score the same documents under every (model, tokenizer) pair of `cfg`."""
    from kovocab.model.safetensors_io import safetensors_problems

    # Every model is checked before the first is scored: a truncated download stops now.
    damaged = [p for m in cfg.models if Path(m).is_dir() for p in safetensors_problems(m, "bpb.models")]
    if damaged:
        raise InputError("\n  ".join(damaged))
    docs = read_documents(cfg.texts, cfg.max_documents)
    tokenizers = cfg.tokenizers + cfg.models[len(cfg.tokenizers) :]  # a model folder holds its own
    results = [
        bits_per_byte(m, t, docs, cfg.max_length, cfg.stride, cfg.batch_size, cfg.dtype, cfg.device)
        for m, t in zip(cfg.models, tokenizers, strict=True)
    ]
    if cfg.out is not None:
        from kovocab.artifacts import write_json

        write_json(cfg.out, {"documents": len(docs), "results": [r.to_dict() for r in results]})
    return results


def bits_per_byte(
    model_dir: str | Path,
    tokenizer: str | Path,
    documents: Sequence[str],
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "auto",
) -> BpbResult:
    """Total NLL of `documents` (each starting after BOS) under the model, per UTF-8 byte."""
    from kovocab.evaluation.scoring import document_nll, load_scorer

    scorer = load_scorer(model_dir, tokenizer, dtype, device, max_length, what="bpb.models")
    try:
        nats, tokens = document_nll(scorer, documents, stride, batch_size)
    except InputError as exc:
        raise InputError(f"bpb.{exc}") from None
    nbytes = sum(len(d.encode("utf-8")) for d in documents)
    res = BpbResult(Path(model_dir), scorer.tokenizer, len(documents), nbytes, tokens, nats / math.log(2))
    log.info("%s + %s: %.4f bits/byte over %d bytes, %d tokens", model_dir, scorer.tokenizer.name,
             res.bits_per_byte, nbytes, tokens)
    return res

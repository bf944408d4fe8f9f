"""Per-source weights: how much of each corpus source goes into a tokenizer sample or token store.

Inputs: shard folders (each record names its `source`), .txt/.jsonl files (the source is the
file name without extensions) and `source_weights` from the recipe. Output: the documents,
each repeated 0, 1 or more times by its source's factor, in input order, with per-source
counts before and after weighting for the manifest. Without weights the legal 86% of
korean_formal would decide the vocabulary (cf. the temperature sampling of XLM, Conneau et al. 2020).
"""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kovocab.config import opt
from kovocab.errors import InputError

WEIGHTS_DOC = (
    "per-source sampling, keyed by source name (shard records' `source`; a plain file: its name "
    "without extensions): {weight: FACTOR, max_share: SHARE}; unlisted sources keep weight 1 (null: all)"
)


@dataclass(frozen=True)
class SourceWeight:
    """How much of one source to use (recipe: `source_weights: {NAME: {weight: ..., max_share: ...}}`)."""

    weight: float = opt(
        1.0,
        "factor on the source's documents: 0.2 keeps a seeded fifth, 3 repeats each 3 times, "
        "2.5 each twice plus a seeded half once more, 0 leaves the source out",
    )
    max_share: float | None = opt(
        None,
        "cap on the source's share of all characters after weighting (0 < x <= 1); lowers the "
        "source's factor until the cap holds, never raises it",
    )

    def check(self) -> list[str]:
        problems = []
        if not math.isfinite(self.weight) or self.weight < 0:
            problems.append(f"weight: must be 0 or more, got {self.weight}")
        if self.max_share is not None and not 0 < self.max_share <= 1:
            problems.append(f"max_share: must be in (0, 1], got {self.max_share}")
        return problems


@dataclass
class SourceCount:
    """One source's documents and characters, before and after weighting."""

    documents: int = 0
    characters: int = 0
    factor: float = 1.0
    documents_weighted: int = 0
    characters_weighted: int = 0


@dataclass
class WeightedCorpus:
    """Documents of `paths` with their sources' factors applied; iterate it once or more.

    `counts` holds every source's figures once an iteration has finished (the figures
    before weighting are known up front when weights are given).
    """

    paths: tuple[Path, ...]
    weights: Mapping[str, SourceWeight] | None = None
    seed: int = 0
    split: str = "train"
    text_field: str = "text"
    what: str = "corpus"
    counts: dict[str, SourceCount] = field(default_factory=dict)

    def __iter__(self) -> Iterator[str]:
        for _, text in self.labelled():
            yield text

    def labelled(self) -> Iterator[tuple[str, str]]:
        """(source, text) of every weighted document, in input order."""
        factors: dict[str, float] = {}
        before: dict[str, SourceCount] = {}
        if self.weights:
            before = count_sources(self.paths, self.split, self.text_field, self.what)
            factors = plan_factors(before, self.weights, self.what)
        counts: dict[str, SourceCount] = {}
        self.counts = counts  # filled as documents go by: a reader that stops early sees what it read
        picks: dict[str, tuple[int, set[int]]] = {}  # source -> (whole copies, indices copied once more)
        for source, text in iter_source_documents(self.paths, self.split, self.text_field, self.what):
            c = counts.get(source)
            if c is None:
                c = counts[source] = SourceCount(factor=factors.get(source, 1.0))
                n = before[source].documents if source in before else 0
                picks[source] = _picks(source, c.factor, n, self.seed)
            whole, extra = picks[source]
            copies = whole + (c.documents in extra)
            c.documents += 1
            c.characters += len(text)
            if copies:
                c.documents_weighted += copies
                c.characters_weighted += copies * len(text)
                for _ in range(copies):
                    yield source, text

    def manifest(self) -> dict[str, Any]:
        """What the manifest records: the weights and each source's contribution."""
        total = sum(c.characters_weighted for c in self.counts.values()) or 1
        weights = self.weights or {}
        return {
            "source_weights": {n: {"weight": w.weight, "max_share": w.max_share} for n, w in weights.items()},
            "sources": {
                name: {
                    "documents": c.documents,
                    "characters": c.characters,
                    "factor": round(c.factor, 6),
                    "documents_weighted": c.documents_weighted,
                    "characters_weighted": c.characters_weighted,
                    "share_weighted": round(c.characters_weighted / total, 6),
                }
                for name, c in sorted(self.counts.items())
            },
        }


def _picks(source: str, factor: float, documents: int, seed: int) -> tuple[int, set[int]]:
    """Whole copies per document and the seeded set of documents that get one more."""
    whole = math.floor(factor)
    frac = factor - whole
    if frac <= 0 or documents == 0:
        return whole, set()
    # Exactly round(frac * n) documents, chosen by a generator seeded by (seed, source): the
    # choice for one source does not depend on the other sources or their order.
    rng = random.Random(f"{seed}/{source}")
    return whole, set(rng.sample(range(documents), round(frac * documents)))


def source_of_file(path: Path) -> str:
    """The source name of a plain .txt/.jsonl input: its file name without extensions."""
    return path.name.split(".")[0]


def iter_source_documents(
    paths: Iterable[Path], split: str = "train", text_field: str = "text", what: str = "corpus"
) -> Iterator[tuple[str, str]]:
    """(source, text) of every document, in the order `iter_corpus_texts` gives the texts."""
    from kovocab.corpus.texts import check_shard_folder, iter_corpus_texts

    for path in map(Path, paths):
        if path.is_dir():
            check_shard_folder(path, what)
            yield from _iter_shard_records(path, split)
        else:
            name = source_of_file(path)
            for text in iter_corpus_texts([path], text_field, split, what):
                yield name, text


def _iter_shard_records(folder: Path, split: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    from kovocab.corpus import shard_files

    for path in shard_files(folder, split, "parquet"):
        for batch in pq.ParquetFile(path).iter_batches(columns=["source", "text"], batch_size=8192):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)


def count_sources(
    paths: Iterable[Path], split: str = "train", text_field: str = "text", what: str = "corpus"
) -> dict[str, SourceCount]:
    """Documents and characters per source (the first pass of weighting)."""
    counts: dict[str, SourceCount] = {}
    for source, text in iter_source_documents(paths, split, text_field, what):
        c = counts.setdefault(source, SourceCount())
        c.documents += 1
        c.characters += len(text)
    return counts


def plan_factors(
    counts: Mapping[str, SourceCount], weights: Mapping[str, SourceWeight], what: str = "corpus"
) -> dict[str, float]:
    """Each source's final factor: its weight, lowered where a max_share cap needs it.

    Caps are filled like water levels: a capped source gets exactly max_share of the total,
    and capping one source grows the others' shares, so caps are applied until none is exceeded.
    """
    unknown = sorted(set(weights) - set(counts))
    if unknown:
        known = ", ".join(sorted(counts)) or "none"
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(counts), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InputError(
            f"{what}: source_weights names {', '.join(hints)}, not a source of the corpus "
            f"(its sources: {known}); use the shard recipe's source names"
        )
    factors = {s: (weights[s].weight if s in weights else 1.0) for s in counts}
    chars = {s: factors[s] * counts[s].characters for s in counts}
    caps = {s: w.max_share for s, w in weights.items() if w.max_share is not None and chars[s] > 0}
    if sum(chars.values()) <= 0:
        raise InputError(f"{what}: source_weights leave no text to sample (every source has weight 0 "
                         "or no characters); give some source a weight above 0")
    capped: set[str] = set()
    while True:
        free = sum(v for s, v in chars.items() if s not in capped)
        cap_sum = sum(caps[s] for s in capped)
        if cap_sum >= 1 or free <= 0:
            raise InputError(
                f"{what}: the max_share caps of {', '.join(sorted(capped))} cannot all hold (they sum "
                f"to {cap_sum:.3g}, and the other sources have {free:.0f} weighted characters to fill the "
                "rest); raise a cap or leave more sources uncapped"
            )
        total = free / (1 - cap_sum)
        over = [s for s in caps if s not in capped and chars[s] > caps[s] * total * (1 + 1e-12)]
        if not over:
            for s in capped:
                factors[s] *= caps[s] * total / chars[s]
            break
        capped.update(over)
    return factors

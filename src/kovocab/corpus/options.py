"""Stage `shard` config: the recipe section `shard:` as typed, frozen dataclasses.

Inputs: a recipe mapping (YAML) with `shard.sources` entries. Outputs: `ShardConfig`
with every source path resolved against the recipe's folder. The field docs are
what `kovocab shard --help` prints (see kovocab.config.describe).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kovocab.artifacts import Owned
from kovocab.config import absolutize_section, load_section, opt, resolve_path
from kovocab.corpus.near_rule import NearRule, near_rule

Format = Literal["auto", "txt", "jsonl", "json", "tsv", "csv", "parquet", "arrow"]
Encoding = Literal["auto", "utf-8", "cp949", "euc-kr"]

SECTION = "shard"
# What `shard` writes in its folder; anything else there makes it refuse (artifacts.Owned).
OUTPUTS = Owned(SECTION, files=(r"(train|eval)-\d{5}-of-\d{5}\.(jsonl\.gz|parquet)", r"quarantine\.jsonl"),
                dirs={"dedup_index": None})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class SourceConfig:
    """One corpus source: a set of files read the same way."""

    name: str = opt(doc="short name (letters, digits, _ . -); every record's `source`, prefix of its `id`")
    paths: tuple[str, ...] = opt(
        doc="files, folders or glob patterns, relative to the recipe's folder; "
        "gzip/xz/zstd/bz2 compression is detected from the magic bytes"
    )
    format: Format = opt(
        "auto", "file format; auto: from the extension (.txt .jsonl .json .tsv .csv .parquet .arrow)"
    )
    field: str = opt(
        "text",
        "JSON field (dotted path for nested objects) or TSV/CSV/Parquet column holding the text; "
        "a 0-based column index for header-less TSV/CSV",
    )
    header: bool = opt(True, "TSV/CSV: the first row names the columns")
    txt_mode: Literal["line", "paragraph"] = opt(
        "line", "txt: one document per line, or per paragraph (blank-line separated)"
    )
    encoding: Encoding = opt(
        "auto", "text encoding; auto: UTF-8 unless a sample of the file decodes better as CP949 (EUC-KR)"
    )
    use: Literal["train", "eval"] = opt(
        "train",
        "train: tokenizer-training shards (eval_permille held out); eval: all documents go to the eval split",
    )
    license: str = opt("unspecified", "license of the source, copied to the manifest")

    def check(self) -> list[str]:
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"name: {self.name!r} must be letters, digits, '_', '.' or '-'")
        if not self.paths:
            problems.append("paths: give at least one file, folder or glob pattern")
        if not self.field:
            problems.append("field: must not be empty")
        return problems


@dataclass(frozen=True)
class ShardConfig:
    """Stage `shard`: Korean text files -> cleaned, deduplicated JSONL.gz + Parquet shards."""

    sources: tuple[SourceConfig, ...] = opt(
        doc="list of sources (name, paths, format, field, header, txt_mode, encoding, use, license)"
    )
    out: Path = opt(doc="output folder (created; must be empty or a previous shard output)")
    shards: int = opt(4, "number of train shards (the eval split is always one shard)")
    eval_permille: int = opt(10, "per-mille of train-source documents held out as eval, chosen by text hash")
    nfc: bool = opt(True, "compose Hangul and other text to Unicode NFC")
    remove_invisible: bool = opt(True, "remove control, zero-width, bidi-format and Hangul filler characters")
    min_chars: int = opt(2, "drop documents shorter than this many characters (after normalising)")
    max_chars: int = opt(1_000_000, "drop documents longer than this many characters")
    min_hangul_ratio: float = opt(0.5, "drop documents whose letters are less than this fraction Hangul")
    max_repeat_ratio: float = opt(
        0.5, "drop documents with more than this fraction of characters in repeated runs (ㅋㅋㅋㅋㅋ...)"
    )
    repeat_min_times: int = opt(5, "a run is a unit of 1-4 characters repeated at least this many times")
    max_dup_line_ratio: float = opt(
        0.3, "drop multi-line documents with more than this fraction of repeated lines"
    )
    exact_dedupe: bool = opt(True, "drop exact duplicates (same normalised text) across all inputs")
    near_dedupe: bool = opt(
        False, "drop near-duplicates (MinHash over character shingles, banded into candidate pairs, "
        "each verified by its share of equal MinHash values; the first of each group is kept)"
    )
    near_threshold: float = opt(
        0.8, "Jaccard similarity of character shingles at which two documents count as near-duplicates "
        "(see near_recall; the manifest lists the share dropped at 0.5 ... 0.95)"
    )
    near_recall: float = opt(
        0.9, "share of pairs at exactly near_threshold that are dropped; banding and the verification "
        "bar are chosen for it, so some pairs below the threshold go too (64 perms at 0.8: 0.29 of "
        "pairs at 0.7, 0.01 at 0.6; more minhash_perms make the cut sharper)"
    )
    minhash_perms: int = opt(64, "MinHash permutations per document (more: better estimates, slower)")
    keep_index: bool = opt(
        False, "keep the dedup index (digests, MinHash signatures, sorted band runs; ~480 bytes per "
        "document) in OUT/dedup_index, so a later batch can be deduplicated against this corpus "
        "(dedupe_against); runs the local engine"
    )
    dedupe_against: tuple[Path, ...] = opt(
        (), "output folders of earlier `shard` runs made with keep_index: a document of this batch that "
        "is an exact or near duplicate of one of theirs (train or eval) is dropped and counted as "
        "exact_earlier / near_earlier; their settings must match; runs the local engine"
    )
    shingle_chars: int = opt(5, "characters per shingle for near-dedupe")
    split_sentences: bool = opt(False, "split documents into sentences with Kiwi, one sentence per line")
    max_record_bytes: int = opt(
        1 << 20, "records longer than this (bytes) are quarantined, never held in memory"
    )
    parts_per_file: int = opt(
        0, "split each input into this many tasks by record number; 0: one per worker for inputs over 4 MiB"
    )
    gzip_level: int = opt(1, "gzip level of the JSONL shards (1: fastest; output is identical for a level)")
    allow_low_yield: bool = opt(
        False,
        "finish even when no document is kept or over half of the records are quarantined; by default "
        "that stops with an error before any shard is written (usually a wrong encoding, format or field)",
    )

    @property
    def near_rule(self) -> NearRule:
        """Banding and verification bar of near-dedupe (kovocab.corpus.near_rule.near_rule)."""
        return near_rule(self.near_threshold, self.minhash_perms, self.near_recall)

    def check(self) -> list[str]:
        problems = []
        if not self.sources:
            problems.append("sources: give at least one source (or INPUT paths on the command line)")
        names = [s.name for s in self.sources]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"sources: the name {name!r} is used twice; names must be unique")
        if self.shards < 1:
            problems.append(f"shards: must be at least 1, got {self.shards}")
        if not 0 <= self.eval_permille <= 1000:
            problems.append(f"eval_permille: must be in 0..1000, got {self.eval_permille}")
        for key in ("min_hangul_ratio", "max_repeat_ratio", "max_dup_line_ratio", "near_threshold"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{key}: must be between 0 and 1, got {value}")
        if self.min_chars < 1:
            problems.append(
                f"min_chars: must be at least 1 (empty documents are always dropped), got {self.min_chars}"
            )
        if self.max_chars < self.min_chars:
            problems.append(f"max_chars: {self.max_chars} is below min_chars {self.min_chars}")
        if self.repeat_min_times < 2:
            problems.append(f"repeat_min_times: must be at least 2, got {self.repeat_min_times}")
        if not 0.1 <= self.near_threshold <= 1.0:
            problems.append(f"near_threshold: must be between 0.1 and 1, got {self.near_threshold}")
        if not 0.5 <= self.near_recall <= 0.99:
            problems.append(f"near_recall: must be between 0.5 and 0.99, got {self.near_recall}")
        if not 2 <= self.minhash_perms <= 1024:
            problems.append(f"minhash_perms: must be in 2..1024, got {self.minhash_perms}")
        if not 1 <= self.shingle_chars <= 32:
            problems.append(f"shingle_chars: must be in 1..32, got {self.shingle_chars}")
        if self.max_record_bytes < 1024:
            problems.append(f"max_record_bytes: must be at least 1024, got {self.max_record_bytes}")
        if self.parts_per_file < 0:
            problems.append(f"parts_per_file: must be 0 (auto) or more, got {self.parts_per_file}")
        if not 0 <= self.gzip_level <= 9:
            problems.append(f"gzip_level: must be in 0..9, got {self.gzip_level}")
        return problems


def load_shard_config(data: Mapping[str, Any]) -> ShardConfig:
    """The `shard:` section of a recipe as a ShardConfig, source paths resolved to the recipe folder."""
    cfg = load_section(ShardConfig, data, SECTION)
    base = data.get("_recipe_dir")
    sources = tuple(
        dataclasses.replace(s, paths=tuple(str(resolve_path(p, base)) for p in s.paths)) for s in cfg.sources
    )
    against = tuple(resolve_path(p, base) for p in cfg.dedupe_against)
    return dataclasses.replace(cfg, sources=sources, dedupe_against=against)


def absolute_section(section: Mapping[str, Any], base_dir: str | Path | None) -> dict[str, Any]:
    """A raw `shard:` section with its relative paths made absolute against `base_dir` (`kovocab run`).

    Source paths are globs (strings), so the type-driven absolutize_section misses them.
    """
    out = absolutize_section(ShardConfig, section, base_dir)
    if isinstance(out.get("sources"), list | tuple):
        out["sources"] = [
            {**s, "paths": [str(resolve_path(p, base_dir)) for p in _as_list(s.get("paths"))]}
            if isinstance(s, Mapping) and "paths" in s else s for s in out["sources"]
        ]
    return out


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value or [])

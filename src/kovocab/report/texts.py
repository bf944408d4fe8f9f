"""Text sets for the report: lines from text, JSONL, JSON and TSV files and kovocab shard folders.

Compression (.gz, .xz, .bz2) is recognised by magic bytes. Documents are split into
stripped, non-empty lines and the first `max_lines` are kept, so a report is
deterministic. Each line gets a script bucket (korean, english, mixed) from its
Hangul and Latin letter shares, so English staying identical can be seen apart, and
its whitespace-separated words (eojeol), to which tokens are assigned by offset.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from bisect import bisect_right
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from kovocab.errors import InputError

BUCKETS = ("korean", "english", "mixed")
KOREAN_MIN_HANGUL = 0.7  # of letters: Korean news keeps Latin acronyms (UN, IT) in Korean lines
ENGLISH_MIN_LATIN = 0.9  # of letters, and no Hangul at all: English ids must be comparable
_WORD = re.compile(r"\S+")
_CODE_CHARS = frozenset("{}[]<>=;_\\|$#~^&`")
_CODE_MARKS = ("()", "->", "::", "=>", "==", "!=", "/*", "//", "</")
_CODE_START = re.compile(
    r"^(def |class |import |from \S+ import |return |#include|function |const |let |var |>>> |\$ )"
)
_HINT = (
    "give a text file (one sentence per line, .gz/.xz ok), a .jsonl/.json file with :FIELD, "
    "a .tsv file with :COLUMN, or a kovocab shard folder"
)


@dataclass(frozen=True)
class TextSet:
    """Lines of one text set with what every tokenizer is measured against."""

    name: str
    path: Path
    lines: list[str]
    buckets: Any  # np.ndarray of bucket names, one per line
    word_spans: list[list[tuple[int, int]]]  # whitespace-separated words, as character spans
    stats: dict[str, Any]  # np.ndarray per line: chars, bytes, words


def script_bucket(line: str) -> str:
    """'korean', 'english' or 'mixed' (mixed scripts, code, other scripts, no letters)."""
    hangul = latin = letters = nonspace = code = 0
    for ch in line:
        if ch.isspace():
            continue
        nonspace += 1
        o = ord(ch)
        if 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
            hangul += 1
            letters += 1
        elif ch.isalpha():
            letters += 1
            latin += o < 0x250
        else:
            code += ch in _CODE_CHARS
    if not letters:
        return "mixed"
    looks_like_code = (
        code >= 0.05 * nonspace or any(m in line for m in _CODE_MARKS) or bool(_CODE_START.match(line))
    )
    if looks_like_code:
        return "mixed"
    if hangul >= KOREAN_MIN_HANGUL * letters:
        return "korean"
    if not hangul and latin >= ENGLISH_MIN_LATIN * letters:
        return "english"
    return "mixed"


def text_set(name: str, path: Path, lines: list[str]) -> TextSet:
    spans = [[(m.start(), m.end()) for m in _WORD.finditer(line)] for line in lines]
    stats = {
        "chars": np.array([len(x) for x in lines], np.int64),
        "bytes": np.array([len(x.encode("utf-8")) for x in lines], np.int64),
        "words": np.array([len(s) for s in spans], np.int64),
    }
    buckets = np.array([script_bucket(x) for x in lines], dtype="<U7")
    return TextSet(name, path, lines, buckets, spans, stats)


def multi_token_words(starts: list[int], spans: list[tuple[int, int]]) -> int:
    """Words (whitespace-separated) that take more than one token.

    A token belongs to the word its first character falls in; a token starting in
    whitespace (SentencePiece's lone `▁`, tiktoken's ` 오늘`) belongs to the next word.
    """
    if not spans:
        return 0
    word_starts = [s for s, _ in spans]
    per_word = [0] * len(spans)
    for s in starts:
        w = bisect_right(word_starts, s) - 1
        if w < 0 or s >= spans[w][1]:
            w = min(w + 1, len(spans) - 1)
        per_word[w] += 1
    return sum(1 for c in per_word if c > 1)


def read_text_set(
    name: str, path: str | Path, field: str | None, default_field: str = "text",
    split: str = "eval", max_lines: int | None = None,
) -> TextSet:
    """Read the first `max_lines` non-empty lines of a text set; `path` may end in `:FIELD`."""
    p, field = split_field(Path(path), field)
    where = f"text set '{name}' ({p})"
    if not p.exists():
        raise InputError(f"{where}: not found; {_HINT}")
    docs = _shard_docs(p, split, where) if p.is_dir() else _file_docs(p, field, default_field, where)
    return text_set(name, p, _first_lines(docs, max_lines, where))


def split_field(path: Path, field: str | None) -> tuple[Path, str | None]:
    """`data.jsonl:premise` -> (data.jsonl, 'premise'), unless the whole string is a path."""
    if field is not None or path.exists():
        return path, field
    head, sep, tail = str(path).rpartition(":")
    if sep and tail and "/" not in tail and Path(head).exists():
        return Path(head), tail
    return path, field


def _first_lines(docs: Generator[str, None, None], max_lines: int | None, where: str) -> list[str]:
    lines: list[str] = []
    try:
        for doc in docs:
            for raw in doc.splitlines():
                line = raw.strip()
                if line:
                    lines.append(line)
                    if max_lines is not None and len(lines) >= max_lines:
                        return lines
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 text ({exc.reason}); convert it to UTF-8") from exc
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise InputError(f"{where}: cannot read ({exc}); is the compressed file truncated?") from exc
    finally:
        docs.close()
    if not lines:
        raise InputError(f"{where}: no non-empty lines; {_HINT}")
    return lines


def _open(path: Path) -> IO[str]:
    with path.open("rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rt", encoding="utf-8")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rt", encoding="utf-8")
    if magic.startswith(b"BZh") and magic[3:4].isdigit():
        return bz2.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".xz", ".bz2")]
    last = suffixes[-1].lower() if suffixes else ""
    return {".jsonl": "jsonl", ".json": "json", ".tsv": "tsv"}.get(last, "text")


def _file_docs(path: Path, field: str | None, default: str, where: str) -> Generator[str, None, None]:
    kind = _kind(path)
    if kind == "text" and field is not None:
        raise InputError(f"{where}: field {field!r} given for a plain text file; fields apply to "
                         f".jsonl, .json and .tsv files")
    with _open(path) as f:
        if kind == "text":
            yield from f
        elif kind == "jsonl":
            yield from _jsonl(f, field or default, where)
        elif kind == "json":
            yield from _json(f, field or default, where)
        else:
            yield from _tsv(f, field or default, field is not None, where)


def _jsonl(f: IO[str], field: str, where: str) -> Iterator[str]:
    for no, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{where}:{no}: not a JSON line ({exc})") from exc
        yield _field(rec, field, f"{where}:{no}")


def _json(f: IO[str], field: str, where: str) -> Iterator[str]:
    try:
        data = json.load(f)
    except ValueError as exc:
        raise InputError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(data, list):
        raise InputError(f"{where}: expected a JSON list of records; use .jsonl for one record per line")
    for i, rec in enumerate(data):
        yield rec if isinstance(rec, str) else _field(rec, field, f"{where}[{i}]")


def _field(rec: Any, field: str, where: str) -> str:
    value = rec.get(field) if isinstance(rec, dict) else None
    if isinstance(value, str):
        return value
    if isinstance(rec, dict) and field not in rec:
        keys = ", ".join(map(str, rec)) or "none"
        raise InputError(f"{where}: no field {field!r} (fields: {keys}); name one as PATH:FIELD or --field")
    return ""  # null or non-text value: nothing to measure in this record


def _tsv(f: IO[str], column: str, explicit: bool, where: str) -> Iterator[str]:
    header = f.readline().rstrip("\r\n").split("\t")
    lowered = [h.lower() for h in header]
    if column in header:
        idx = header.index(column)
    elif column.lower() in lowered:
        idx = lowered.index(column.lower())
    elif explicit and column.isdigit():
        idx = int(column)
        yield header[idx] if idx < len(header) else ""  # no header row: the first line is data
    else:
        raise InputError(f"{where}: no column {column!r} in the header (columns: {', '.join(header)}); "
                         f"name one as PATH:COLUMN (or a 0-based index)")
    for line in f:
        cells = line.rstrip("\r\n").split("\t")
        if idx < len(cells):
            yield cells[idx]


def _shard_docs(path: Path, split: str, where: str) -> Generator[str, None, None]:
    # Read the gzip JSONL shards directly ({"id","source","text"} per line): no
    # dependency on the corpus stage or pyarrow just to read evaluation text.
    if not (path / "manifest.json").is_file():
        raise InputError(f"{where}: a folder without manifest.json, so not a kovocab shard folder; "
                         f"{_HINT} (or run `kovocab shard ... --out {path}` first)")
    files = sorted(path.glob(f"{split}-*.jsonl.gz"))
    if not files:
        found = ", ".join(sorted(p.name for p in path.glob("*.jsonl.gz"))) or "none"
        raise InputError(f"{where}: no {split}-*.jsonl.gz shards (found: {found}); set shard_split")
    for shard in files:
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            yield from _jsonl(f, "text", f"{where}/{shard.name}")

"""Korean text inputs as documents: shard folders (one split), text and JSONL files.

The one reader of "Korean text" that tokenizer training, token stores, source weights
and bits per byte share. Text files may be gzip/xz-compressed; JSONL records whose text
is no text are skipped (and counted, see `collect_skipped`) as `kovocab shard` would
quarantine them.
"""

from __future__ import annotations

import contextvars
import gzip
import io
import json
import logging
import lzma
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kovocab.errors import InputError

log = logging.getLogger(__name__)


def iter_corpus_texts(
    paths: Iterable[Path], text_field: str = "text", split: str = "train", what: str = "corpus"
) -> Iterator[str]:
    """Documents from shard folders (their `split`), text files and JSONL files, in order.

    The one reader of "Korean text" inputs: tokenizer training, token stores and bits per
    byte all call it; `what` names the config key in error messages.
    """
    for path in paths:
        p = Path(path)
        if p.is_dir():
            check_shard_folder(p, what)
            from kovocab.corpus.shards import iter_shard_texts

            yield from iter_shard_texts(p, split=split)
        elif p.is_file():
            yield from _iter_file(p, text_field)
        else:
            raise InputError(f"{what}: path not found: {p}")


def check_shard_folder(path: Path, what: str) -> None:
    """A folder input must be a `kovocab shard` output."""
    if not (path / "manifest.json").is_file():
        raise InputError(
            f"{what}: {path} is a folder without manifest.json; give a `kovocab shard` "
            "output folder or the text files themselves"
        )


def _open_text(path: Path) -> io.TextIOBase:
    raw: Any
    if path.suffix == ".gz":
        raw = gzip.open(path, "rb")
    elif path.suffix == ".xz":
        raw = lzma.open(path, "rb")
    else:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the TextIOWrapper
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    is_jsonl = ".jsonl" in path.suffixes
    line_no = 0
    skipped: dict[str, int] = {}
    first_skip = 0
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not is_jsonl:
                    yield line.rstrip("\n")
                    continue
                if not line.strip():
                    continue
                text, reason = _record_text(json.loads(line), text_field, path, line_no)
                if reason is None:
                    yield text
                    continue
                # As `kovocab shard` quarantines them: a null, list, dict or number is no text,
                # and str() of it ("None", "['…']") must not become a training sentence.
                skipped[reason] = skipped.get(reason, 0) + 1
                first_skip = first_skip or line_no
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 {f'after line {line_no}' if line_no else 'in its first lines'} "
            f"({exc.reason}); run `kovocab shard` on it "
            "first, which detects CP949/EUC-KR and quarantines undecodable lines"
        ) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{line_no}: invalid JSON ({exc.msg}); fix the line or run "
                         "`kovocab shard` on the file, which quarantines broken records") from exc
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: compressed file is truncated or corrupt ({exc})") from exc
    if skipped:
        counts = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
        log.warning("%s: skipped %d record(s) whose '%s' is not usable text (%s; first at line %d)",
                    path, sum(skipped.values()), text_field, counts, first_skip)
    collector = _SKIPPED.get()
    if collector is not None:  # set per file, so a second pass over the file counts once
        collector[str(path)] = skipped


def _record_text(record: Any, text_field: str, path: Path, line_no: int) -> tuple[str, str | None]:
    """(text, None), or ("", reason) for a record to skip; InputError for a line that is no record."""
    from kovocab.corpus.decoding import value_text

    if not isinstance(record, dict):
        kind = {type(None): "null", str: "string", list: "list", bool: "boolean"}.get(type(record), "number")
        raise InputError(
            f"{path}:{line_no}: a JSON {kind}, not an object with a '{text_field}' field; write one "
            f'object per line ({{"{text_field}": "..."}}), or plain text lines in a .txt file'
        )
    if text_field not in record:
        raise InputError(
            f"{path}:{line_no}: no field '{text_field}' (fields: "
            f"{', '.join(sorted(record))}); set tokenizer_training.text_field"
        )
    text, problem = value_text(record[text_field], b"", [text_field])
    return (text, None) if text is not None else ("", problem.reason if problem else "not-text")


# Filled by `collect_skipped`: {file: {reason: records}} of JSONL records the reader skipped.
_SKIPPED: contextvars.ContextVar[dict[str, dict[str, int]] | None] = contextvars.ContextVar(
    "kovocab_skipped", default=None)


@contextmanager
def collect_skipped() -> Iterator[dict[str, dict[str, int]]]:
    """Record, for the texts `iter_corpus_texts` yields inside the block, the JSONL records it
    skipped per file and reason (`not-text`, `nul-byte`, `invalid-encoding`), for a manifest."""
    found: dict[str, dict[str, int]] = {}
    token = _SKIPPED.set(found)
    try:
        yield found
    finally:
        _SKIPPED.reset(token)


def skipped_summary(found: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """{reason: records} over every file, for a manifest's stats."""
    total: dict[str, int] = {}
    for per_file in found.values():
        for reason, n in per_file.items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))

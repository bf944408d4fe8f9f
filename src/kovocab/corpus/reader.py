"""Stage `shard`, read: one input file -> batches of numbered records (txt, JSONL, TSV here).

Inputs: an InputFile. Outputs: `Batch`es of consecutive records, a record that cannot
be read being None with its Problem (quarantined). Memory is bounded by a chunk and
max_record_bytes; clean UTF-8 TSV chunks are parsed by Arrow's C++ CSV reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from kovocab.corpus.decoding import (
    CODECS,
    RAW_KEEP_BYTES,
    Batch,
    Overlong,
    Problem,
    decode_chunk,
    get_field,
    iter_line_chunks,
    too_long,
    value_text,
)
from kovocab.corpus.inputs import InputFile, open_stream
from kovocab.corpus.options import SourceConfig
from kovocab.corpus.tables import read_csv, read_json_array, read_table


def read_batches(inp: InputFile, src: SourceConfig, limit: int) -> Iterator[Batch]:
    """All records of one input file, in order, in batches."""
    if inp.empty:
        return
    if inp.format in ("parquet", "arrow"):
        yield from read_table(inp, src)
    elif inp.format == "json":
        yield from read_json_array(inp, src, limit)
    elif inp.format == "csv":
        yield from read_csv(inp, src, limit)
    else:
        yield from _lines(inp, src, limit)


def _lines(inp: InputFile, src: SourceConfig, limit: int) -> Iterator[Batch]:
    """txt (line or paragraph), jsonl and tsv: records built from decoded lines."""
    line_no = 0  # lines before the current chunk
    record = 0
    paragraphs = (
        _Paragraphs(limit, inp.encoding) if inp.format == "txt" and src.txt_mode == "paragraph" else None
    )
    header = inp.format == "tsv" and src.header
    path = src.field.split(".")
    codec = CODECS[inp.encoding]
    with open_stream(inp.path, inp.compression) as stream:
        for chunk in iter_line_chunks(stream, limit):
            if isinstance(chunk, Overlong):
                header = False
                lines: list[str | None] = [None]
                problems = {0: too_long(chunk.head, chunk.size, limit)}
            else:
                if header:
                    header = False
                    nl = chunk.find(b"\n")
                    chunk = chunk[nl + 1 :] if nl >= 0 else b""
                    line_no += 1
                    if not chunk:
                        continue
                if inp.format == "tsv" and (texts := _tsv_fast(chunk, inp, limit)) is not None:
                    line_no += len(texts)  # one row per line, or there would be no fast path
                    if texts:
                        yield Batch(record, texts)  # type: ignore[arg-type]
                        record += len(texts)
                    continue
                lines, problems = decode_chunk(chunk, inp.encoding, limit)
            if paragraphs is not None:
                batch = paragraphs.feed(lines, problems, line_no, record)
            elif inp.format == "txt":
                batch = Batch(record, lines, problems, {i: line_no + i + 1 for i in problems})
            elif inp.format == "jsonl":
                batch = _jsonl(lines, problems, line_no, record, path, codec)
            else:
                batch = _tsv(lines, problems, line_no, record, inp.column, codec)
            line_no += len(lines)
            if batch.texts:
                record += len(batch.texts)
                yield batch
    if paragraphs is not None:
        batch = paragraphs.finish(record)
        if batch.texts:
            yield batch


def _tsv_fast(chunk: bytes, inp: InputFile, limit: int) -> list[str] | None:
    """The text column of a clean UTF-8 TSV chunk, parsed by Arrow; None: use the line path.

    Clean means what the line path would accept without a problem: valid UTF-8, no
    NUL, no CR (Arrow would end a row there), no line over the limit, and every row
    with exactly the header's columns. Arrow's parser in C++ is the hot path for NSMC.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if inp.encoding != "utf-8" or inp.ncols <= inp.column or b"\r" in chunk or b"\x00" in chunk:
        return None
    if b"\n\n" in chunk or chunk.startswith(b"\n"):
        return None  # blank lines: no rows for the line path, skipped silently by Arrow
    if len(chunk) > limit:
        ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
        if np.diff(ends, prepend=-1, append=len(chunk)).max() > limit + 1:
            return None
    invalid: list[object] = []

    def on_invalid(row: object) -> str:
        invalid.append(row)
        return "skip"

    names = [f"c{i}" for i in range(inp.ncols)]
    try:
        table = pcsv.read_csv(
            pa.py_buffer(chunk),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pcsv.ParseOptions(
                delimiter="\t",
                quote_char=False,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=True,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pcsv.ConvertOptions(
                include_columns=[names[inp.column]],
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        return None  # invalid UTF-8, most likely: the line path quarantines it
    if invalid:
        return None
    texts: list[str] = table.column(0).to_pylist()
    # A whitespace-only line is a row for Arrow (with one column) but none for the line path.
    if len(texts) != chunk.count(b"\n") + (not chunk.endswith(b"\n")):
        return None
    return texts


def _tsv(
    lines: list[str | None], problems: dict[int, Problem], line_no: int, record: int, column: int, codec: str
) -> Batch:
    texts: list[str | None] = []
    bad: dict[int, Problem] = {}
    at: dict[int, int] = {}
    for i, line in enumerate(lines):
        if line is None:
            bad[len(texts)], at[len(texts)] = problems[i], line_no + i + 1
            texts.append(None)
            continue
        if not line.strip():
            continue  # a blank line is no row
        cols = line.split("\t")
        if column < len(cols):
            texts.append(cols[column])
        else:
            raw = line.encode(codec)
            bad[len(texts)] = Problem(
                "bad-row",
                f"row has {len(cols)} columns, the text is column {column}",
                raw[:RAW_KEEP_BYTES],
                len(raw),
            )
            at[len(texts)] = line_no + i + 1
            texts.append(None)
    return Batch(record, texts, bad, at)


def _jsonl(
    lines: list[str | None],
    problems: dict[int, Problem],
    line_no: int,
    record: int,
    path: list[str],
    codec: str,
) -> Batch:
    texts: list[str | None] = []
    bad: dict[int, Problem] = {}
    at: dict[int, int] = {}
    loads = json.loads
    for i, line in enumerate(lines):
        problem = problems.get(i)
        text = None
        if line is not None:
            if not line.strip():
                continue  # blank lines separate nothing in JSONL
            try:
                text, problem = value_text(get_field(loads(line), path), b"", path)
            except ValueError as exc:
                problem = Problem("bad-json", f"not valid JSON: {exc}", b"", 0)
            except KeyError:
                problem = Problem("missing-field", f"no field {'.'.join(path)!r}", b"", 0)
            if problem is not None:
                raw = line.encode(codec)
                problem.raw, problem.size = raw[:RAW_KEEP_BYTES], len(raw)
        if problem is not None:
            bad[len(texts)], at[len(texts)] = problem, line_no + i + 1
        texts.append(text)
    return Batch(record, texts, bad, at)


class _Paragraphs:
    """Groups lines into blank-line-separated paragraphs across chunk boundaries."""

    def __init__(self, limit: int, encoding: str) -> None:
        self.limit, self.codec = limit, CODECS[encoding]
        self.parts: list[str] = []
        self.size = 0
        self.first_line = 0
        self.problem: Problem | None = None
        self.out: Batch = Batch(0, [])

    def feed(self, lines: list[str | None], problems: dict[int, Problem], line_no: int, record: int) -> Batch:
        self.out = Batch(record, [])
        for i, line in enumerate(lines):
            if line is not None and not line.strip():
                self._emit()
                continue
            if not self.parts and self.problem is None:
                self.first_line = line_no + i + 1
            if line is None or self.problem is not None:
                # One bad line spoils its whole paragraph: keep the first problem.
                self.problem = self.problem or problems[i]
                continue
            self.size += len(line.encode(self.codec)) + 1
            if self.size > self.limit:
                head = "\n".join(self.parts).encode(self.codec)[:RAW_KEEP_BYTES]
                self.problem = too_long(head, self.size, self.limit)
                self.parts = []
                continue
            self.parts.append(line)
        return self.out

    def finish(self, record: int) -> Batch:
        self.out = Batch(record, [])
        self._emit()
        return self.out

    def _emit(self) -> None:
        if self.problem is not None:
            index = len(self.out.texts)
            self.out.problems[index], self.out.lines[index] = self.problem, self.first_line
            self.out.texts.append(None)
        elif self.parts:
            self.out.texts.append("\n".join(self.parts))
        self.parts, self.size, self.problem = [], 0, None

"""Stage `shard`, read (tables): CSV, JSON arrays, Parquet and Arrow -> batches of records.

Inputs: an InputFile whose records are rows. Outputs: `Batch`es as for line formats.
CSV streams with quoting; a JSON array is parsed whole (use JSONL for large corpora);
Parquet/Arrow stream through Hugging Face `datasets`. Reference: RFC 4180 (CSV).
"""

from __future__ import annotations

import csv
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
from kovocab.errors import InputError

TABLE_BATCH = 4096


def line_chunks(inp: InputFile, limit: int) -> Iterator[tuple[list[str | None], dict[int, Problem]]]:
    """Decoded lines of a file, chunk by chunk, with the problems of bad lines."""
    with open_stream(inp.path, inp.compression) as stream:
        for chunk in iter_line_chunks(stream, limit):
            if isinstance(chunk, Overlong):
                yield [None], {0: too_long(chunk.head, chunk.size, limit)}
            else:
                yield decode_chunk(chunk, inp.encoding, limit)


def read_csv(inp: InputFile, src: SourceConfig, limit: int) -> Iterator[Batch]:
    """CSV with quoting; an undecodable or over-long line spoils the row it is in."""
    column = inp.column
    spoiled: dict[int, Problem] = {}  # by physical line number
    record = 0
    line_no = 0

    def physical() -> Iterator[str]:
        nonlocal line_no
        for chunk, problems in line_chunks(inp, limit):
            for i, line in enumerate(chunk):
                line_no += 1
                if line is None:
                    spoiled[line_no] = problems[i]
                    line = ""
                yield line + "\n"

    csv.field_size_limit(max(limit, 1 << 17))
    reader = csv.reader(physical())
    texts: list[str | None] = []
    bad: dict[int, Problem] = {}
    at: dict[int, int] = {}
    start_line = 1
    need_header = src.header
    try:
        for row in reader:
            end_line = reader.line_num
            if need_header:
                need_header, start_line = False, end_line + 1
                continue
            problem = next((spoiled.pop(n) for n in range(start_line, end_line + 1) if n in spoiled), None)
            if row or problem is not None:
                if problem is None and column >= len(row):
                    raw = ",".join(row).encode("utf-8")
                    problem = Problem(
                        "bad-row",
                        f"row has {len(row)} columns, the text is column {column}",
                        raw[:RAW_KEEP_BYTES],
                        len(raw),
                    )
                if problem is not None:
                    bad[len(texts)], at[len(texts)] = problem, start_line
                    texts.append(None)
                else:
                    texts.append(row[column])
            start_line = end_line + 1
            if len(texts) >= TABLE_BATCH:
                yield Batch(record, texts, bad, at)
                record += len(texts)
                texts, bad, at = [], {}, {}
    except csv.Error as exc:
        raise InputError(
            f"{inp.path}: line {reader.line_num}: malformed CSV ({exc}); fix the quoting"
        ) from exc
    if texts:
        yield Batch(record, texts, bad, at)


def read_json_array(inp: InputFile, src: SourceConfig, limit: int) -> Iterator[Batch]:
    with open_stream(inp.path, inp.compression) as stream:
        data = stream.read()
    try:
        items = json.loads(data.decode(CODECS[inp.encoding]).lstrip("\ufeff"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{inp.path}: not a JSON document ({exc}); for one object per line use format: jsonl"
        ) from exc
    if isinstance(items, dict):
        raise InputError(
            f"{inp.path}: a JSON object, not an array of records; for one object per line use format: jsonl"
        )
    if not isinstance(items, list):
        raise InputError(f"{inp.path}: expected a JSON array of records, got {type(items).__name__}")
    path = src.field.split(".")
    for start in range(0, len(items), TABLE_BATCH):
        texts: list[str | None] = []
        bad: dict[int, Problem] = {}
        for i, item in enumerate(items[start : start + TABLE_BATCH]):
            raw = b""
            try:
                text, problem = value_text(get_field(item, path), raw, path)
            except KeyError:
                text, problem = None, Problem("missing-field", f"no field {'.'.join(path)!r}", raw, 0)
            if text is not None and len(text) * 4 > limit:
                data = text.encode("utf-8")
                if len(data) > limit:
                    text, problem = None, too_long(data[:RAW_KEEP_BYTES], len(data), limit)
            if problem is not None:
                raw = json.dumps(item, ensure_ascii=False).encode("utf-8")
                problem.raw, problem.size = problem.raw or raw[:RAW_KEEP_BYTES], problem.size or len(raw)
                bad[i] = problem
            texts.append(text)
        yield Batch(start, texts, bad, {})


def read_table(inp: InputFile, src: SourceConfig) -> Iterator[Batch]:
    """Parquet or Arrow files, streamed in batches by Hugging Face `datasets`."""
    import datasets

    datasets.disable_progress_bars()
    path = src.field.split(".")
    ds = datasets.load_dataset(inp.format, data_files=[str(inp.path)], split="train", streaming=True)
    ds = ds.select_columns([path[0]])
    record = 0
    for rows in ds.iter(batch_size=TABLE_BATCH):
        texts: list[str | None] = []
        bad: dict[int, Problem] = {}
        for i, value in enumerate(rows[path[0]]):
            try:
                text, problem = value_text(get_field(value, path[1:]), b"", path)
            except KeyError:
                text, problem = None, Problem("missing-field", f"no field {'.'.join(path)!r}", b"", 0)
            if problem is not None:
                raw = repr(value).encode("utf-8")
                problem.raw, problem.size = raw[:RAW_KEEP_BYTES], len(raw)
                bad[i] = problem
            texts.append(text)
        yield Batch(record, texts, bad, {})
        record += len(texts)

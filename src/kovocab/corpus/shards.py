"""Stage `shard`, phase 2 output: Arrow batches -> JSONL.gz + Parquet shards, and reading back.

Inputs: kept documents as Arrow arrays. Outputs: `{split}-0000i-of-0000N.jsonl.gz` (gzip
mtime 0, no name) and `.parquet` with row groups cut by content only, so bytes never depend
on workers or batching; `iter_shard_texts` reads a split. Reference: RFC 1952, Apache Parquet.
"""

from __future__ import annotations

import gzip
import heapq
import json
from collections.abc import Iterator
from contextlib import ExitStack
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

import numpy as np

from kovocab.artifacts import atomic_open, read_manifest
from kovocab.errors import InputError

ROW_GROUP_ROWS = 65536
ROW_GROUP_CHARS = 64 << 20  # keeps a row group of long documents within memory


# Arrays are built from buffers: pa.array(), pa.scalar() and .to_numpy() import pandas
# (a third of a second per process), which nothing here needs.


def int_array(values: np.ndarray) -> Any:
    """An Arrow uint64/int64 array over a numpy array's memory."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    kind = pa.uint64() if values.dtype == np.uint64 else pa.int64()
    return pa.Array.from_buffers(
        kind, len(values), [None, pa.py_buffer(values.astype(values.dtype.newbyteorder("<")))]
    )


def bool_array(mask: np.ndarray) -> Any:
    import pyarrow as pa

    bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def string_array(encoded: list[bytes]) -> Any:
    """An Arrow large_string array of UTF-8 byte strings."""
    import pyarrow as pa

    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    data = b"".join(encoded)
    return pa.Array.from_buffers(
        pa.large_string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def repeated(text: str, n: int) -> Any:
    """`text` n times as an Arrow large_string array."""
    import pyarrow as pa

    raw = text.encode("utf-8")
    offsets = np.arange(n + 1, dtype=np.int64) * len(raw)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)])


def numbers(array: Any, dtype: Any) -> np.ndarray:
    """The values of a primitive Arrow array without nulls, as a numpy view."""
    values: np.ndarray = np.frombuffer(array.buffers()[1], dtype=dtype)
    return values[array.offset : array.offset + len(array)]


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}"


def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string())])


class ShardWriter:
    """One shard as JSONL.gz and Parquet, written to temporary names and renamed on close."""

    def __init__(self, out: Path, name: str, gzip_level: int, stack: ExitStack) -> None:
        import pyarrow.parquet as pq

        self.name = name
        raw = stack.enter_context(atomic_open(out / f"{name}.jsonl.gz"))
        # mtime=0 and no file name: the same documents always give the same bytes.
        self.gz = stack.enter_context(
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=gzip_level, mtime=0)
        )
        pq_file = stack.enter_context(atomic_open(out / f"{name}.parquet"))
        # Dictionary encoding only pays for `source`; trying it on unique texts and ids
        # only to fall back costs a tenth of the writing time.
        self.pq = pq.ParquetWriter(pq_file, parquet_schema(), compression="zstd", use_dictionary=["source"])
        stack.push(self._exit)
        self.chunks: list[tuple[Any, Any, Any]] = []  # (ids, sources, texts) Arrow arrays
        self.rows = 0
        self.chars = 0
        self.docs = 0
        self.total_chars = 0
        self.closed = False

    def add(self, ids: Any, source: str, texts: Any) -> None:
        """Append documents (Arrow string arrays); a row group closes at ROW_GROUP_ROWS rows or
        before ROW_GROUP_CHARS characters, so its bounds depend only on the shard's content."""
        import pyarrow.compute as pc

        n = len(texts)
        cum = np.cumsum(numbers(pc.utf8_length(texts), np.int64))
        i = 0
        while i < n:
            if self.rows >= ROW_GROUP_ROWS:
                self.flush()
            room = ROW_GROUP_ROWS - self.rows
            seg = cum[i : i + room] - (cum[i - 1] if i else 0)
            fit = int(np.searchsorted(seg, ROW_GROUP_CHARS - self.chars, side="right"))
            if fit == 0:
                if self.rows:
                    self.flush()
                    continue
                fit = 1  # one document over the bound is a row group of its own
            sources = repeated(source, fit)
            self.chunks.append((ids.slice(i, fit), sources, texts.slice(i, fit)))
            self.rows += fit
            self.chars += int(seg[fit - 1])
            i += fit
            if i < n and fit < room:
                self.flush()  # stopped by the character bound

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.rows:
            return
        ids, sources, texts = (pa.concat_arrays([c[k] for c in self.chunks]) for k in range(3))
        # JSON lines built in Arrow: only texts with a quote, backslash or control
        # character go through json's escaper; the bytes equal
        # json.dumps({"id":..., "source":..., "text":...}, ensure_ascii=False).
        n = len(texts)
        quote, nothing = repeated('"', n), repeated("", n)
        quoted = pc.binary_join_element_wise(quote, texts, quote, nothing)
        special = pc.match_substring_regex(texts, r'["\\\x00-\x1f]')
        if pc.any(special).as_py():
            escaped = [encode_basestring(t).encode("utf-8") for t in texts.filter(special).to_pylist()]
            quoted = pc.replace_with_mask(quoted, special, string_array(escaped))
        lines = pc.binary_join_element_wise(
            repeated('{"id": "', n),
            ids,
            repeated('", "source": "', n),
            sources,
            repeated('", "text": ', n),
            quoted,
            repeated("}\n", n),
            nothing,
        )
        ends = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + n + 1]
        self.gz.write(memoryview(lines.buffers()[2])[ends[0] : ends[-1]])
        string = pa.string()
        table = pa.Table.from_arrays([a.cast(string) for a in (ids, sources, texts)], schema=parquet_schema())
        self.pq.write_table(table, row_group_size=self.rows)
        self.docs += self.rows
        self.total_chars += self.chars
        self.chunks, self.rows, self.chars = [], 0, 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
            self.pq.close()
        except BaseException:
            self._abandon()
            raise

    def _exit(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        """Close on success; on an error (a full disk) abandon the shard without writing more,
        so the first error is the one reported and no `write to closed file` follows it."""
        if exc_type is None:
            self.close()
        elif not self.closed:
            self.closed = True
            self._abandon()
        return False

    def _abandon(self) -> None:
        try:
            self.pq.close()
        except (OSError, ValueError):
            self.pq.is_open = False  # else its __del__ tries again and prints the same error


def merged_batches(paths: list[Path], columns: list[str] | None = None) -> Iterator[Any]:
    """Record batches of several part files of one input, merged into record order."""
    import pyarrow as pa

    readers = [pa.ipc.open_stream(pa.memory_map(str(p))) for p in paths]
    if len(readers) == 1:
        for batch in readers[0]:
            yield batch.select(columns) if columns else batch
        return
    pending: list[Any] = [None] * len(readers)
    done = [False] * len(readers)
    while True:
        for k, reader in enumerate(readers):
            while not done[k] and (pending[k] is None or pending[k].num_rows == 0):
                try:
                    batch = reader.read_next_batch()
                    pending[k] = batch.select(columns) if columns else batch
                except StopIteration:
                    done[k], pending[k] = True, None
        active = [k for k in range(len(readers)) if pending[k] is not None]
        if not active:
            return
        # Every part is sorted, so records up to the smallest "last record" are complete.
        frontier = min(_records(pending[k])[-1] for k in active)
        taken = []
        for k in active:
            cut = int(np.searchsorted(_records(pending[k]), frontier, side="right"))
            taken.append(pending[k].slice(0, cut))
            pending[k] = pending[k].slice(cut)
        table = pa.Table.from_batches(taken).combine_chunks()
        order = np.argsort(numbers(table.column("record").chunk(0), np.uint64), kind="stable")
        yield from table.take(int_array(order)).combine_chunks().to_batches()


def _records(batch: Any) -> np.ndarray:
    return numbers(batch.column("record"), np.uint64)


def merged_quarantine(paths: list[Path]) -> Iterator[bytes]:
    """Quarantine lines of several parts, in record order (each part is already sorted)."""
    files = [open(p, "rb") for p in paths]
    try:
        yield from heapq.merge(*files, key=lambda line: json.loads(line)["record"])
    finally:
        for f in files:
            f.close()


def fixed_width(column: Any, width: int) -> memoryview:
    """The data buffer of a fixed-size binary column, from its first row."""
    data = column.buffers()[1]
    return memoryview(data)[column.offset * width : (column.offset + len(column)) * width]


def shard_files(folder: str | Path, split: str = "train", kind: str = "jsonl.gz") -> list[Path]:
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("stage") != "shard":
        raise InputError(f"{folder}: no shard manifest.json; run `kovocab shard ... --out {folder}` first")
    table = manifest["splits"] if kind == "jsonl.gz" else manifest["parquet"]
    if split not in table:
        raise InputError(f"{folder}: no split {split!r} (splits: {', '.join(table)})")
    return [folder / name for name in table[split]]


def iter_shard_texts(folder: str | Path, split: str = "train") -> Iterator[str]:
    """Every document text of one split of a finished shard folder, in shard order."""
    import pyarrow.parquet as pq

    for path in shard_files(folder, split, "parquet"):
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=8192):
            yield from batch.column(0).to_pylist()

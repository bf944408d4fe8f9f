"""Stage `shard`, inputs: source paths -> a checked, ordered list of input files.

Inputs: ShardConfig.sources (files, folders, globs). Outputs: `InputFile`s with sha256,
compression (magic bytes), format, encoding and text column, all problems raised at
once before work starts. Reference: RFC 1952 (gzip), xz and zstd frame formats.
"""

from __future__ import annotations

import bz2
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kovocab.config import suggest
from kovocab.corpus.decoding import SNIFF_BYTES, check_not_utf16, sniff_encoding
from kovocab.corpus.options import ShardConfig, SourceConfig
from kovocab.errors import InputError

MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bz2"))
COMPRESSED_SUFFIXES = {".gz", ".gzip", ".xz", ".zst", ".zstd", ".bz2"}
FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".tsv": "tsv",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


@dataclass(frozen=True)
class InputFile:
    """One input file of one source, as the tasks read it."""

    source: int  # index into cfg.sources
    index: int  # index of the file within its source (sorted order)
    path: Path
    sha256: str
    size: int  # bytes on disk
    compression: str  # none, gzip, xz, zstd, bz2
    format: str
    encoding: str  # utf-8 or cp949 (auto resolved)
    column: int  # TSV/CSV column index; -1 otherwise
    ncols: int  # TSV/CSV columns in the header; 0 when unknown
    empty: bool  # no bytes after decompression


def detect_compression(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return "none"


class _Checked(io.RawIOBase):
    """A decompressing stream whose corruption errors become InputErrors naming the file.

    Reads go to the decompressor in steps of at most _STEP bytes, so an error reports how
    much was decompressed before it (within one step) and where in the file it stopped.
    """

    _STEP = 1 << 16

    def __init__(self, inner: BinaryIO, raw: BinaryIO, path: Path, compression: str) -> None:
        self.inner, self.raw, self.path, self.compression, self.pos = inner, raw, path, compression, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = size if size is not None and size >= 0 else 1 << 62
        parts: list[bytes] = []
        got = 0
        while got < want:
            try:
                data = self.inner.read(min(want - got, self._STEP))
            except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
                raise InputError(
                    f"{self.path}: the {self.compression} stream is truncated or corrupt: "
                    f"{self.pos + got} bytes decompressed, then it stopped at byte {self._raw_at()} of "
                    f"{self._raw_size()} in the file ({exc}); re-create or re-download the file"
                ) from exc
            if not data:
                break
            parts.append(data)
            got += len(data)
        self.pos += got
        return b"".join(parts)

    def _raw_at(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return -1

    def _raw_size(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        self.inner.close()
        self.raw.close()
        super().close()


def open_stream(path: Path, compression: str) -> BinaryIO:
    """The decompressed bytes of `path`, read as a stream."""
    if compression == "zstd":
        return _Zstd(path)  # type: ignore[return-value]
    raw = open(path, "rb")
    inner: Any
    if compression == "gzip":
        inner = gzip.GzipFile(fileobj=raw, mode="rb")
    elif compression == "xz":
        inner = lzma.LZMAFile(raw, "rb")
    elif compression == "bz2":
        inner = bz2.BZ2File(raw, "rb")
    else:
        return raw
    return _Checked(inner, raw, path, compression)  # type: ignore[return-value]


class _Zstd(io.RawIOBase):
    """zstd frames one after another, decoded in bounded steps.

    zstandard's stream_reader returns b"" at a truncated frame instead of raising,
    so the frames are fed by hand and an unfinished frame at the end is an error.
    """

    def __init__(self, path: Path) -> None:
        import zstandard

        self.path, self.file, self.buf, self.pos = path, open(path, "rb"), b"", 0
        self.new = zstandard.ZstdDecompressor().decompressobj
        self.dobj = self.new()
        self.fed = False  # bytes fed to the current frame

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = size if size >= 0 else 1 << 62
        while len(self.buf) < want:
            data = self.file.read(1 << 16)
            if not data:
                if self.fed and not self.dobj.eof:
                    raise InputError(
                        f"{self.path}: the zstd stream is truncated after {self.pos + len(self.buf)} "
                        "bytes; re-create or re-download the file"
                    )
                break
            while data:
                if self.dobj.eof:  # next frame
                    self.dobj, self.fed = self.new(), False
                try:
                    self.buf += self.dobj.decompress(data)
                except Exception as exc:  # zstandard.ZstdError, without importing it here
                    raise InputError(f"{self.path}: corrupt zstd data ({exc}); re-create the file") from exc
                self.fed = True
                data = self.dobj.unused_data if self.dobj.eof else b""
        out, self.buf = self.buf[:want], self.buf[want:]
        self.pos += len(out)
        return out

    def close(self) -> None:
        self.file.close()
        super().close()


def source_format(path: Path, src: SourceConfig, compression: str) -> str | None:
    if src.format != "auto":
        return src.format
    suffixes = [s.lower() for s in path.suffixes]
    if compression != "none" and suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def expand(
    src: SourceConfig, where: str, problems: list[str], skipped: list[dict[str, str]] | None = None
) -> list[Path]:
    """The files named by a source's paths: files as given, folders walked, globs expanded.

    A folder's hidden files (a name or parent folder starting with '.') and, with format
    auto, files whose name gives no known format (README, .png) are not read; each is
    appended to `skipped` (source, path, reason) so the manifest can count them.
    """
    found: list[Path] = []
    for pattern in src.paths:
        p = Path(pattern)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            files = []
            for q in sorted(q for q in p.rglob("*") if q.is_file()):
                if any(part.startswith(".") for part in q.relative_to(p).parts):
                    reason = "hidden"
                elif src.format == "auto" and not _known_format(q, src):
                    reason = "unknown format"
                else:
                    files.append(q)
                    continue
                if skipped is not None:
                    skipped.append({"source": src.name, "path": str(q), "reason": reason})
            if not files:
                problems.append(f"{where}.paths: folder {p} holds no readable files")
            found.extend(files)
        elif glob.has_magic(pattern):
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
            if not matches:
                problems.append(f"{where}.paths: the pattern {pattern} matches no files")
            found.extend(matches)
        else:
            problems.append(
                f"{where}.paths: no such file or folder: {p} "
                "(a recipe's paths are relative to its folder, the command line's to the current one)"
            )
    unique: list[Path] = []
    seen: set[Path] = set()
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _known_format(path: Path, src: SourceConfig) -> bool:
    """Whether the name gives a format; `x.txt.xz` counts even when its bytes are not xz
    (it is then reported as a bad file, not skipped)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return bool(source_format(path, src, detect_compression(path))) or bool(
        suffixes and suffixes[-1] in FORMATS
    )


def sha256_and_size(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _column(
    src: SourceConfig, fmt: str, head: bytes, encoding: str, where: str, problems: list[str]
) -> tuple[int, int]:
    """The index of the text column in a TSV/CSV file, checked against its header."""
    if not src.header:
        if src.field.isdigit():
            return int(src.field), 0
        problems.append(
            f"{where}: header: false needs field: to be a 0-based column index, got {src.field!r}"
        )
        return -1, 0
    first = (
        head.split(b"\n", 1)[0]
        .rstrip(b"\r")
        .decode("cp949" if encoding == "cp949" else "utf-8-sig", errors="replace")
    )
    if fmt == "csv":
        import csv

        columns = next(csv.reader([first]), [])
    else:
        columns = first.split("\t")
    if src.field in columns:
        return columns.index(src.field), len(columns)
    problems.append(
        f"{where}: column {src.field!r} is not in the header ({', '.join(columns)})"
        f"{suggest(src.field, columns)}; set field: to one of them"
    )
    return -1, 0


def _check_json_field(
    src: SourceConfig, fmt: str, head: bytes, encoding: str, where: str, problems: list[str]
) -> None:
    """Check that the first JSON record has the field, when the first record fits the sample."""
    text = head.decode("cp949" if encoding == "cp949" else "utf-8", errors="replace")
    record: Any = None
    if fmt == "jsonl":
        for line in text.split("\n")[:-1] if len(head) >= SNIFF_BYTES else text.split("\n"):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    return  # a broken first line is the record's problem: quarantined
                break
    if not isinstance(record, dict):
        return
    node: Any = record
    for part in src.field.split("."):
        if not isinstance(node, dict) or part not in node:
            keys = list(node) if isinstance(node, dict) else []
            problems.append(
                f"{where}: the first record has no field {src.field!r} (keys: {', '.join(keys)})"
                f"{suggest(part, keys)}; set field: to the one holding the text"
            )
            return
        node = node[part]


def _check_table_field(src: SourceConfig, fmt: str, path: Path, where: str, problems: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            names = pq.read_schema(path).names
        else:
            with pa.memory_map(str(path)) as f:
                try:
                    names = pa.ipc.open_stream(f).schema.names
                except pa.ArrowInvalid:
                    names = pa.ipc.open_file(f).schema.names
    except (pa.ArrowException, OSError) as exc:
        problems.append(f"{where}: cannot read {path} as {fmt}: {exc}")
        return
    top = src.field.split(".")[0]
    if top not in names:
        problems.append(
            f"{where}: column {top!r} is not in {path.name} ({', '.join(names)})"
            f"{suggest(top, names)}; set field: to one of them"
        )


def probe(
    cfg: ShardConfig, hashes: bool = True, skipped: list[dict[str, str]] | None = None
) -> list[InputFile]:
    """Every input file, checked; all problems raised together as one InputError.

    hashes=False leaves sha256 empty (see with_sha256): a cluster array task hashes
    only the files it reads. Files of input folders that are not read go to `skipped`.
    """
    problems: list[str] = []
    files: list[InputFile] = []
    for si, src in enumerate(cfg.sources):
        where = f"shard.sources[{si}] ({src.name})"
        for fi, path in enumerate(expand(src, where, problems, skipped)):
            files.extend(_probe_file(si, fi, src, path, where, problems, hashes))
    if problems:
        head = f"{len(problems)} input problems:\n  - " if len(problems) > 1 else ""
        raise InputError(head + "\n  - ".join(problems))
    return files


def with_sha256(inp: InputFile) -> InputFile:
    return inp if inp.sha256 else dataclasses.replace(inp, sha256=sha256_and_size(inp.path)[0])


def _probe_file(
    si: int, fi: int, src: SourceConfig, path: Path, where: str, problems: list[str], hashes: bool
) -> Iterator[InputFile]:
    compression = detect_compression(path)
    fmt = source_format(path, src, compression)
    at = f"{where} {path}"
    named = path.suffix.lower()
    if compression == "none" and named in COMPRESSED_SUFFIXES and src.format == "auto":
        kind = {".gzip": "gzip", ".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}.get(named, named[1:])
        if path.stat().st_size == 0:
            problems.append(f"{at}: the file is empty (0 bytes), so it is not valid {kind} data; "
                            "remove it, or re-create or re-download it")
        else:
            problems.append(f"{at}: named {named} but it does not start like {kind} data (no {kind} header); "
                            f"re-create it, or rename it without {named} if it is not compressed")
        return
    if fmt is None:
        problems.append(
            f"{at}: cannot tell the format from the name; "
            "set format: (txt, jsonl, json, tsv, csv, parquet, arrow)"
        )
        return
    if fmt in ("parquet", "arrow") and compression != "none":
        problems.append(f"{at}: {fmt} files compress internally; decompress the {compression} wrapper first")
        return
    digest, size = sha256_and_size(path) if hashes else ("", path.stat().st_size)
    encoding, column, ncols, head = "utf-8", -1, 0, b""
    if fmt in ("parquet", "arrow"):
        _check_table_field(src, fmt, path, at, problems)
    else:
        try:
            with open_stream(path, compression) as stream:
                head = stream.read(SNIFF_BYTES)
        except InputError as exc:
            problems.append(f"{where}: {exc}")
            return
        try:
            check_not_utf16(head, at)
        except InputError as exc:
            problems.append(str(exc))
            return
        encoding = sniff_encoding(head) if src.encoding == "auto" else src.encoding
        if fmt in ("tsv", "csv") and head:
            column, ncols = _column(src, fmt, head, encoding, at, problems)
        elif fmt in ("jsonl", "json") and head:
            _check_json_field(src, fmt, head, encoding, at, problems)
    empty = size == 0 or (fmt not in ("parquet", "arrow") and not head)
    yield InputFile(si, fi, path, digest, size, compression, fmt, encoding, column, ncols, empty)

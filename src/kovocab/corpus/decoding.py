"""Stage `shard`, decode: byte lines -> str lines; bad records become Problems, never lost.

Inputs: a decompressed byte stream. Outputs: chunks of complete lines decoded strictly
(UTF-8, or CP949/EUC-KR named or sniffed per file); undecodable, NUL-carrying and
over-long lines become `Problem`s for quarantine. Reference: WHATWG Encoding (EUC-KR).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kovocab.errors import InputError

BLOCK_BYTES = 1 << 20
SNIFF_BYTES = 1 << 16
RAW_KEEP_BYTES = 4096  # how much of a quarantined record is kept, base64, in quarantine.jsonl
# Ends the detail of a line that is not UTF-8 but is CP949: the file was sniffed as UTF-8
# from its first SNIFF_BYTES, and CP949 text starts later (counted and warned about).
CP949_HINT = "; the line decodes as CP949"

# euc-kr is a strict subset of cp949 (Microsoft's extension): decoding as cp949
# accepts every EUC-KR file and also the 8,822 extra syllables UHC added.
CODECS = {"utf-8": "utf-8", "cp949": "cp949", "euc-kr": "cp949"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_CR = re.compile(rb"\r(?!\n)")


@dataclass
class Problem:
    """A record that cannot be read as text: it goes to quarantine.jsonl, counted under `reason`."""

    reason: str  # a short key: invalid-encoding, nul-byte, record-too-large, bad-json, ...
    detail: str
    raw: bytes  # at most RAW_KEEP_BYTES of the record
    size: int  # the record's full size in bytes


@dataclass
class Batch:
    """Records start, start+1, ...: the text, or None for a record with a problem."""

    start: int
    texts: list[str | None]
    problems: dict[int, Problem] = field(default_factory=dict)  # by index into texts
    lines: dict[int, int] = field(default_factory=dict)  # 1-based line of a problem record


@dataclass
class Overlong:
    """A line longer than the limit, seen as its first bytes and its length only."""

    head: bytes
    size: int


def sniff_encoding(sample: bytes) -> str:
    """'utf-8' or 'cp949', whichever decodes more lines of `sample` (ties: UTF-8)."""
    if sample.startswith(b"\xef\xbb\xbf"):
        return "utf-8"
    lines = sample.split(b"\n")
    if len(sample) >= SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the sample may end inside a line, even inside a character
    ok = {"utf-8": 0, "cp949": 0}
    for line in lines:
        if line.isascii():
            continue
        for enc in ok:
            try:
                line.decode(enc)
                ok[enc] += 1
            except UnicodeDecodeError:
                pass
    # UTF-8 Korean rarely parses as CP949 (a UTF-8 lead byte is often followed by a
    # byte CP949 forbids), so a clear CP949 majority means a legacy file.
    return "cp949" if ok["cp949"] > ok["utf-8"] else "utf-8"


def check_not_utf16(sample: bytes, where: str) -> None:
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(
            f"{where}: starts with a UTF-16 byte-order mark; kovocab reads UTF-8 or CP949/EUC-KR: "
            "convert it first (iconv -f UTF-16 -t UTF-8)"
        )


def iter_line_chunks(stream: BinaryIO, limit: int) -> Iterator[bytes | Overlong]:
    """Complete lines in chunks of about BLOCK_BYTES; a line over `limit` bytes as an Overlong.

    Memory stays within limit + BLOCK_BYTES whatever the line lengths: an over-long
    line is skipped while only its head and length are kept. Line ends are universal
    newlines, as Python's text mode reads them: a lone CR (classic Mac files) ends a
    line like LF and is turned into LF; CRLF stays for the normaliser to strip.
    """
    carry = b""
    skipping: Overlong | None = None
    for block in _blocks(stream):
        if skipping is not None:
            nl = block.find(b"\n")
            if nl < 0:
                skipping.size += len(block)
                continue
            skipping.size += nl
            yield skipping
            skipping = None
            block = block[nl + 1 :]
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut >= 0:
            yield data[: cut + 1]
            carry = data[cut + 1 :]
        else:
            carry = data
        if len(carry) > limit:
            skipping = Overlong(carry[:RAW_KEEP_BYTES], len(carry))
            carry = b""
    if skipping is not None:
        yield skipping
    elif carry:
        yield carry


def _blocks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream in blocks of about BLOCK_BYTES, BOM dropped, every lone CR made an LF.

    A CR at the end of a block is held back until the next block shows whether an LF
    follows it, so a CRLF split across two blocks stays one line end.
    """
    held = b""
    first = True
    while block := stream.read(BLOCK_BYTES):
        if first:
            first = False
            if block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
        if held:
            block, held = held + block, b""
        if b"\r" in block:
            if block.endswith(b"\r"):
                block, held = block[:-1], b"\r"
            block = _LONE_CR.sub(b"\n", block)
        if block:
            yield block
    if held:
        yield b"\n"


def decode_chunk(chunk: bytes, encoding: str, limit: int) -> tuple[list[str | None], dict[int, Problem]]:
    """The lines of a chunk as str; a line that cannot be used is None with its Problem by index."""
    codec = CODECS[encoding]
    problems: dict[int, Problem] = {}
    if chunk.endswith(b"\n"):
        chunk = chunk[:-1]
    try:
        # One C call for the whole chunk is the hot path; per-line only on failure.
        lines: list[str | None] = list(chunk.decode(codec).split("\n"))
    except UnicodeDecodeError:
        lines = []
        for i, raw in enumerate(chunk.split(b"\n")):
            try:
                lines.append(raw.decode(codec))
            except UnicodeDecodeError as exc:
                lines.append(None)
                problems[i] = Problem(
                    "invalid-encoding",
                    f"not valid {encoding}: {exc.reason} at byte {exc.start}"
                    + (CP949_HINT if codec == "utf-8" and _is_cp949(raw) else ""),
                    raw[:RAW_KEEP_BYTES],
                    len(raw),
                )
    if b"\x00" in chunk:
        for i, line in enumerate(lines):
            if line is not None and "\x00" in line:
                raw = line.encode(codec)
                problems[i] = Problem(
                    "nul-byte", "contains NUL bytes (binary data?)", raw[:RAW_KEEP_BYTES], len(raw)
                )
                lines[i] = None
    # A str line has at most 4 bytes per character, so only lines over limit/4
    # characters need their exact byte length.
    if max(map(len, filter(None, lines)), default=0) * 4 > limit:
        for i, line in enumerate(lines):
            if line is not None and len(line) * 4 > limit:
                raw = line.encode(codec)
                if len(raw) > limit:
                    problems[i] = too_long(raw[:RAW_KEEP_BYTES], len(raw), limit)
                    lines[i] = None
    return lines, problems


def _is_cp949(raw: bytes) -> bool:
    try:
        raw.decode("cp949")
    except UnicodeDecodeError:
        return False
    return True


def too_long(head: bytes, size: int, limit: int) -> Problem:
    return Problem("record-too-large", f"record of {size} bytes is over max_record_bytes={limit}", head, size)


def get_field(obj: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(part)
        obj = obj[part]
    return obj


def value_text(value: Any, raw: bytes, path: list[str]) -> tuple[str | None, Problem | None]:
    """The text of a record's field value, or the Problem that quarantines the record."""
    if isinstance(value, str):
        if "\x00" in value:
            return None, Problem(
                "nul-byte", "the text contains NUL characters", raw[:RAW_KEEP_BYTES], len(raw)
            )
        if _SURROGATE.search(value):
            # JSON may escape lone surrogates (\\ud800); they are not text and cannot be UTF-8.
            return None, Problem("invalid-encoding", "lone surrogate escape", raw[:RAW_KEEP_BYTES], len(raw))
        return value, None
    kind = "null" if value is None else type(value).__name__
    return None, Problem(
        "not-text", f"field {'.'.join(path)!r} is {kind}, not a string", raw[:RAW_KEEP_BYTES], len(raw)
    )

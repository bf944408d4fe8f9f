"""Stage `shard`: code points and class bits of a whole batch, for the numpy passes.

Inputs: texts. Outputs: one uint32 code point array (texts separated by NUL padding)
and a uint8 table of class bits per code point (whitespace kinds, invisible, Hangul,
other letters), so one gather serves normalise and filter. Reference: Unicode L* categories.
"""

from __future__ import annotations

import functools

import numpy as np

# Bits of the table. BAD: a character normalise removes or rewrites (an invisible
# one, a line break other than "\n", whitespace other than " " and "\n").
BAD, SPACE, NEWLINE, NUL, HANGUL, LETTER = 1, 2, 4, 8, 16, 32

# Control characters (C0/C1 other than whitespace), zero-width and bidi format
# characters, the soft hyphen, and the Hangul fillers: Korean web text uses
# U+3164 and friends as "invisible" letters, which would also count as Hangul.
INVISIBLE_RANGES = (
    (0x01, 0x08), (0x0E, 0x1B), (0x7F, 0x84), (0x86, 0x9F), (0xAD, 0xAD), (0x115F, 0x1160),
    (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
    (0x3164, 0x3164), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB),
)  # fmt: skip
HANGUL_RANGES = ((0x1100, 0x11FF), (0x3131, 0x318E), (0xA960, 0xA97F), (0xAC00, 0xD7A3), (0xD7B0, 0xD7FF),
                 (0xFFA1, 0xFFDC))  # fmt: skip
PAD = "\x00" * 4  # between texts: wider than any window compared across positions (repeat units <= 4)


@functools.cache
def _letters() -> np.ndarray:
    table = np.zeros(0x110000, dtype=np.uint8)
    # str.isalpha() is exactly "general category L*"; mapped over planes 0-1 it takes
    # ~15 ms per process. Planes 2-3 hold only CJK ideographs, all letters.
    alpha = np.fromiter(map(str.isalpha, map(chr, range(0x20000))), dtype=bool, count=0x20000)
    table[:0x20000][alpha] = LETTER
    table[0x20000:0x40000] = LETTER
    for lo, hi in HANGUL_RANGES:
        table[lo : hi + 1] = HANGUL
    return table


@functools.cache
def table(remove_invisible: bool) -> np.ndarray:
    """The class bits of every code point (invisible characters are BAD only when removed)."""
    t = _letters().copy()
    for cp in range(0x3001):  # every whitespace character is below U+3001
        if chr(cp).isspace():
            t[cp] = BAD
    t[ord(" ")], t[ord("\n")], t[0] = SPACE, NEWLINE, NUL
    if remove_invisible:
        for lo, hi in INVISIBLE_RANGES:
            t[lo : hi + 1] = BAD
    return t


def codepoints(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The texts as one uint32 array with PAD before, between and after; start offsets; lengths."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    starts = np.empty(len(texts), dtype=np.int64)
    starts[0] = len(PAD)
    np.cumsum(lengths[:-1] + len(PAD), out=starts[1:])
    starts[1:] += len(PAD)
    a = np.frombuffer((PAD + PAD.join(texts) + PAD).encode("utf-32-le"), dtype=np.uint32)
    return a, starts, lengths

"""Stage `shard`, normalise: raw texts -> invisible characters removed, whitespace unified, NFC.

Inputs: decoded texts (no NUL). Outputs: line breaks as "\\n", other whitespace runs as
one space, lines stripped, blank lines dropped, Hangul composed (NFC); only texts that
need it are touched. Reference: Unicode UAX #15 (normalization forms).
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np

from kovocab.corpus.charclass import BAD, INVISIBLE_RANGES, NEWLINE, NUL, SPACE, codepoints, table

INVISIBLE = re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in INVISIBLE_RANGES) + "]")
# The line boundaries of str.splitlines(), except "\n" itself.
LINEBREAK = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def needs_work(flags: np.ndarray, starts: np.ndarray, texts: list[str], nfc: bool) -> np.ndarray:
    """Which texts normalise_text would change, from their class bits (see charclass).

    A text is already canonical when it has no BAD character, no two whitespace
    characters in a row, no whitespace at either end, and is NFC.
    """
    ws = (flags & (SPACE | NEWLINE)) != 0
    nul = flags == NUL
    viol = (flags & BAD) != 0
    viol[:-1] |= ws[:-1] & (ws[1:] | nul[1:])  # double whitespace, or whitespace at the end
    viol[1:] |= nul[:-1] & ws[1:]  # whitespace at the start
    dirty: np.ndarray = np.logical_or.reduceat(viol, starts)
    if nfc:
        is_nfc = functools.partial(unicodedata.is_normalized, "NFC")
        dirty |= ~np.fromiter(map(is_nfc, texts), dtype=bool, count=len(texts))
    return dirty


def normalise_texts(texts: list[str], nfc: bool = True, remove_invisible: bool = True) -> list[str]:
    """normalise_text on every text, but only the few that need it pay a Python call.

    Per-record regex passes were the hot path of the whole pipeline; on NSMC about
    6% of reviews need any change.
    """
    if not texts:
        return []
    a, starts, _ = codepoints(texts)
    dirty = np.flatnonzero(needs_work(table(remove_invisible)[a], starts, texts, nfc)).tolist()
    if not dirty:
        return texts
    out = list(texts)
    for i in dirty:
        out[i] = normalise_text(texts[i], nfc, remove_invisible)
    return out


def normalise_text(text: str, nfc: bool = True, remove_invisible: bool = True) -> str:
    """The definition, one text at a time."""
    if remove_invisible:
        text = INVISIBLE.sub("", text)
    lines = (" ".join(line.split()) for line in LINEBREAK.sub("\n", text).split("\n"))
    text = "\n".join(line for line in lines if line)
    return unicodedata.normalize("NFC", text) if nfc else text


def options(nfc: bool, remove_invisible: bool) -> dict[str, object]:
    """What normalisation did, for the manifest."""
    return {
        "unicode": "NFC" if nfc else "none",
        "removed": (
            "controls, zero-width, bidi formats, soft hyphen, Hangul fillers" if remove_invisible else "none"
        ),
        "whitespace": "line breaks -> \\n; other runs -> one space; lines stripped; blank lines dropped",
    }

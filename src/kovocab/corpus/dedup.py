"""Stage `shard`, dedupe: exact (BLAKE2b digests) and MinHash signatures; first seen wins.

Inputs: normalised texts. Outputs: 16-byte digests, MinHash signatures computed for a
whole batch with numpy yet equal to datasketch's affine32 MinHash, and the first-copy
test. Near-duplicates from the signatures: kovocab.corpus.near. Reference: Broder 1997.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

DIGEST_BYTES = 16
SEED = 1  # datasketch's default seed: the permutations are datasketch's own
_M = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime, as a polynomial base
_MIX = np.uint64(0x9E3779B97F4A7C15)


def digests(encoded: Iterable[bytes]) -> bytes:
    """The 16-byte BLAKE2b digests of UTF-8 texts, concatenated."""
    blake = hashlib.blake2b
    return b"".join([blake(t, digest_size=DIGEST_BYTES).digest() for t in encoded])


def shingle_hash(shingle: str, width: int) -> int:
    """32-bit hash of one shingle (padded with NUL to `width`): the reference for the numpy path."""
    h = 0
    for ch in shingle.ljust(width, "\x00"):
        h = (h * 0x100000001B3 + ord(ch)) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 29
    return ((h * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 32


def shingles(text: str, width: int) -> list[str]:
    """The character shingles of a text; a text shorter than `width` is one shingle."""
    if len(text) <= width:
        return [text]
    return [text[i : i + width] for i in range(len(text) - width + 1)]


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's finalizer, which datasketch's affine32 scheme applies to every input hash.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@np.errstate(over="ignore")
def _window_hashes(a: np.ndarray, width: int) -> np.ndarray:
    n = len(a) - width + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(width):
        h = h * _M + a[j : j + n].astype(np.uint64)
    h ^= h >> np.uint64(29)
    return ((h * _MIX) >> np.uint64(32)).astype(np.uint32)


class MinHasher:
    """MinHash signatures of many texts at once, bit-equal to datasketch's affine32 MinHash."""

    def __init__(self, num_perm: int, width: int, chunk_windows: int = 1 << 17) -> None:
        from datasketch import MinHash

        a, b = MinHash(num_perm=num_perm, seed=SEED, scheme="affine32").permutations
        self.a, self.b = a.astype(np.uint32), b.astype(np.uint32)
        self.num_perm, self.width, self.chunk = num_perm, width, chunk_windows

    @np.errstate(over="ignore")
    def signatures(self, texts: list[str]) -> np.ndarray:
        """uint32 array (len(texts), num_perm); texts must not be empty."""
        w = self.width
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        i = 0
        while i < len(texts):
            # Groups of texts with about `chunk` shingles bound the (shingles x perms) matrix.
            j, total = i, 0
            while j < len(texts) and (total == 0 or total + len(texts[j]) <= self.chunk):
                total += max(len(texts[j]) - w + 1, 1)
                j += 1
            out[i:j] = self._group(texts[i:j], w)
            i = j
        return out

    @np.errstate(over="ignore")
    def _group(self, texts: list[str], w: int) -> np.ndarray:
        pad = "\x00" * w
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        starts = np.zeros(len(texts), dtype=np.int64)
        np.cumsum(lengths[:-1] + w, out=starts[1:])
        a = np.frombuffer((pad.join(texts) + pad).encode("utf-32-le"), dtype=np.uint32)
        hashes = _window_hashes(a, w)
        nwin = np.maximum(lengths - w + 1, 1)
        first = np.zeros(len(texts), dtype=np.int64)
        np.cumsum(nwin[:-1], out=first[1:])
        # Window k of text t starts at starts[t] + k: shorter texts keep one window,
        # padded with NUL exactly as shingle_hash pads.
        pos = np.arange(int(nwin.sum()), dtype=np.int64) + np.repeat(starts - first, nwin)
        hv = _fmix32(hashes[pos])
        # (perms x shingles): each reduceat segment is contiguous, twice as fast as the transpose.
        values = self.a[:, None] * hv[None, :] + self.b[:, None]
        result: np.ndarray = np.minimum.reduceat(values, first, axis=1).T
        return result


def first_occurrences(digests: np.ndarray) -> np.ndarray:
    """For (n, 2) uint64 digests in global order: True where a digest is seen for the first time.

    One stable sort over the whole corpus (16 bytes per document) instead of a Python
    set (about 90 bytes and half a microsecond per document).
    """
    if len(digests) == 0:
        return np.zeros(0, dtype=bool)
    # Sorting on the first 8 bytes is enough unless two different digests share them;
    # then (never seen in practice) sort on all 16.
    order = np.argsort(digests[:, 0], kind="stable")
    d = digests[order]
    same = d[1:, 0] == d[:-1, 0]
    if np.any(same & (d[1:, 1] != d[:-1, 1])):
        order = np.lexsort((digests[:, 1], digests[:, 0]))  # also stable
        d = digests[order]
        same = (d[1:, 0] == d[:-1, 0]) & (d[1:, 1] == d[:-1, 1])
    first = np.zeros(len(d), dtype=bool)
    first[order[np.concatenate(([True], ~same))]] = True
    return first

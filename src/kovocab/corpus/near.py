"""Stage `shard`, near-dedupe: MinHash banding -> candidate pairs -> verified pairs -> components.

Inputs: MinHash signatures (uint32, n x perms) with document ids in global order. Outputs:
the ids of near-duplicates (every member of a component of verified pairs but its first).
Both engines call these functions, so they drop the same documents. Reference: Broder 1997;
Leskovec, Rajaraman, Ullman, Mining of Massive Datasets, ch. 3.4 (the S-curve).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kovocab.corpus.near_rule import NEAR_RECALL, NearRule, near_rule

WINDOW = 32  # a bucket member is compared with up to this many earlier members of the bucket
CHUNK = 1 << 16  # signatures looked up at a time (64 perms: 16 MB), so memory is flat in the pairs
_P1 = np.uint64(0x100000001B3)
_MIX = np.uint64(0x9E3779B97F4A7C15)


@np.errstate(over="ignore")
def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 (n, bands): one 64-bit hash of each band's `rows` signature values."""
    n = len(sigs)
    out = np.empty((n, bands), dtype=np.uint64)
    for b in range(bands):
        h = np.zeros(n, dtype=np.uint64)
        for v in sigs[:, b * rows : (b + 1) * rows].T:
            h = (h ^ v.astype(np.uint64)) * _P1
        h ^= h >> np.uint64(31)
        out[:, b] = h * _MIX
    return out


def sort_band(hashes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(m, 2) uint64 [hash, id] sorted by hash, then id: one band's bucket table."""
    order = np.lexsort((ids, hashes))
    return np.stack([hashes[order], ids[order]], axis=1)


@np.errstate(over="ignore")
def _signature_keys(sigs: np.ndarray) -> np.ndarray:
    h = np.zeros(len(sigs), dtype=np.uint64)
    for v in sigs.T:
        h = (h ^ v.astype(np.uint64)) * _P1
    return h


def bucket_pairs(
    table: np.ndarray, signatures: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (earlier id, later id) of a sorted band table (a bucket: all ids with
    one hash). Members with the same whole signature (copies) pair with the first of them
    only; the others pair with each of the up to WINDOW such members before them. So a text
    copied a thousand times costs a thousand pairs, not WINDOW thousand. `signatures` gives
    the signatures of ids (only members of buckets of two or more are asked for)."""
    none = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    same = table[1:, 0] == table[:-1, 0]
    multi = np.zeros(len(table), dtype=bool)
    multi[1:] |= same
    multi[:-1] |= same
    if not multi.any():
        return none
    h, ids = table[multi, 0], table[multi, 1]
    keys = np.concatenate([_signature_keys(signatures(ids[i : i + CHUNK]))
                           for i in range(0, len(ids), CHUNK)])
    order = np.lexsort((ids, keys, h))
    h, keys, ids = h[order], keys[order], ids[order]
    new = np.ones(len(h), dtype=bool)
    new[1:] = (h[1:] != h[:-1]) | (keys[1:] != keys[:-1])
    first = ids[np.maximum.accumulate(np.where(new, np.arange(len(h)), 0))]
    left, right = [first[~new]], [ids[~new]]
    rep = np.lexsort((ids[new], h[new]))
    rh, rid = h[new][rep], ids[new][rep]
    for k in range(1, WINDOW + 1):
        hit = np.flatnonzero(rh[k:] == rh[:-k])
        if not len(hit):
            break  # no bucket has more than k distinct signatures
        left.append(rid[hit])
        right.append(rid[hit + k])
    return np.concatenate(left), np.concatenate(right)


def verified(a: np.ndarray, b: np.ndarray, rule: NearRule, signatures: Callable[[np.ndarray], np.ndarray],
             signatures_b: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Which candidate pairs (a[i], b[i]) have at least rule.min_equal equal MinHash values;
    `signatures` gives the signatures of ids (of b's: `signatures_b`, default the same),
    asked for CHUNK pairs at a time."""
    lookup_b = signatures if signatures_b is None else signatures_b
    ok = np.zeros(len(a), dtype=bool)
    for i in range(0, len(a), CHUNK):
        equal = (signatures(a[i : i + CHUNK]) == lookup_b(b[i : i + CHUNK])).sum(axis=1)
        ok[i : i + CHUNK] = equal >= rule.min_equal
    return ok


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m, 2) uint64 distinct pairs, sorted (a pair found in several bands counts once)."""
    if not len(a):
        return np.zeros((0, 2), dtype=np.uint64)
    pairs = np.stack([a, b], axis=1).astype(np.uint64)
    result: np.ndarray = np.unique(pairs, axis=0)
    return result


def component_labels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, label): the sorted ids of the pairs and, per node, the index (into nodes) of the
    smallest id of its connected component (union-find over the pairs only, by min-label
    propagation with pointer jumping)."""
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    ai, bi = inverse[: len(a)], inverse[len(a) :]
    label = np.arange(len(nodes))
    while len(a):
        low = np.minimum(label[ai], label[bi])
        new = label.copy()
        for side in (ai, bi):
            np.minimum.at(new, side, low)
            np.minimum.at(new, label[side], low)  # hook the old root too
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    return nodes, label


def spanning_forest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m, 2) uint64 [smallest id of the component, id] for every id of the pairs but the
    smallest of its component, sorted: the same components as the pairs with at most one
    edge per id (a group of n similar documents gives up to WINDOW x n pairs, n - 1 edges)."""
    if not len(a):
        return np.zeros((0, 2), dtype=np.uint64)
    nodes, label = component_labels(a, b)
    child = label != np.arange(len(nodes))
    forest = np.stack([nodes[label[child]], nodes[child]], axis=1).astype(np.uint64)
    result: np.ndarray = forest[np.lexsort((forest[:, 1], forest[:, 0]))]
    return result


def components(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted ids that are not the smallest id of their connected component."""
    if not len(a):
        return np.zeros(0, dtype=np.uint64)
    nodes, label = component_labels(a, b)
    result: np.ndarray = nodes[label != np.arange(len(nodes))]
    return result


def near_duplicates(sigs: np.ndarray, ids: np.ndarray, threshold: float, recall: float = NEAR_RECALL
                    ) -> np.ndarray:
    """All in memory (the one-process path): sorted ids of near-duplicates among `sigs`."""
    rule = near_rule(threshold, sigs.shape[1], recall)
    bands, rows = rule.bands, rule.rows
    if np.any(ids[1:] <= ids[:-1]):
        raise ValueError("kovocab bug: near_duplicates needs increasing ids")
    hashes = band_hashes(sigs, bands, rows)
    found_a, found_b = [], []

    def lookup(which: np.ndarray) -> np.ndarray:
        result: np.ndarray = sigs[np.searchsorted(ids, which)]
        return result

    for band in range(bands):
        a, b = bucket_pairs(sort_band(hashes[:, band], ids), lookup)
        ok = verified(a, b, rule, lookup)
        found_a.append(a[ok])
        found_b.append(b[ok])
    pairs = unique_pairs(np.concatenate(found_a), np.concatenate(found_b))
    return components(pairs[:, 0], pairs[:, 1])

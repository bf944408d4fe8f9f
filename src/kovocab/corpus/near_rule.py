"""Stage `shard`, near-dedupe: which pairs count as near-duplicates (banding and the
verification bar), and the share of pairs of each Jaccard similarity that are dropped.

Pure Python (no numpy), so the config and `kovocab --help` can use it. The S-curve of banding
is 1 - (1 - s^r)^b (Leskovec, Rajaraman, Ullman, Mining of Massive Datasets, ch. 3.4); the
verification bar is a binomial tail: each MinHash value agrees with probability s (Broder 1997).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

NEAR_RECALL = 0.9  # default share of pairs at exactly the threshold that are dropped


def s_curve(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard `similarity` share at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def at_least(equal: int, perms: int, similarity: float) -> float:
    """P(at least `equal` of `perms` MinHash values agree) for documents of Jaccard `similarity`
    (each value agrees with probability `similarity`: a binomial tail)."""
    return _tails(perms, similarity)[min(max(equal, 0), perms + 1)]


@lru_cache(maxsize=256)
def _tails(perms: int, similarity: float) -> tuple[float, ...]:
    """P(at least m values agree) for m = 0 .. perms + 1."""
    pmf = [math.comb(perms, k) * similarity**k * (1.0 - similarity) ** (perms - k) for k in range(perms + 1)]
    tails = [0.0] * (perms + 2)
    for k in range(perms, -1, -1):
        tails[k] = tails[k + 1] + pmf[k]
    return tuple(min(t, 1.0) for t in tails)


@dataclass(frozen=True)
class NearRule:
    """How near-duplicates are found: pairs sharing one of `bands` bands of `rows` values become
    candidates; a candidate is a near-duplicate when at least `min_equal` of its `perms`
    values agree (its estimated Jaccard is >= min_equal / perms)."""

    threshold: float
    recall: float
    perms: int
    bands: int
    rows: int
    min_equal: int

    def dropped(self, similarity: float) -> float:
        """P(a pair of this Jaccard is a near-duplicate): candidate x verified. The two share
        the signature (a candidate agrees on a whole band), so this is a lower bound."""
        return s_curve(similarity, self.bands, self.rows) * at_least(self.min_equal, self.perms, similarity)

    def describe(self) -> dict[str, object]:
        return {"bands": self.bands, "rows": self.rows, "min_equal": self.min_equal,
                "s_curve": {f"{s:.2f}": round(self.dropped(s), 3) for s in sorted(
                    {0.5, 0.6, 0.7, 0.8, 0.9, 0.95, round(max(self.threshold - 0.05, 0.0), 2),
                     self.threshold})}}


@lru_cache(maxsize=64)
def near_rule(threshold: float, perms: int, recall: float = NEAR_RECALL) -> NearRule:
    """The banding and verification bar that drop >= `recall` of pairs at exactly `threshold`
    and as few pairs below it as they can.

    Each (bands, rows) with P(candidate | threshold) >= recall gets the highest bar `min_equal`
    that keeps candidate x verified >= recall at the threshold; of those the rule dropping
    the fewest pairs at threshold - 0.1 wins (ties: fewer bands). One band of all values is
    the fallback. 64 perms at 0.8, recall 0.9: 12 bands x 5 rows, 47 of 64 equal; it drops
    92% of pairs at 0.8, 65% at 0.75, 29% at 0.7, 1% at 0.6 and almost every pair from 0.85
    up (128 perms: 21 x 6, 97 of 128; 46% at 0.75, 8% at 0.7).
    """
    best: tuple[float, int, NearRule] | None = None
    tails = _tails(perms, threshold)
    for rows in range(2, perms + 1):
        bands = perms // rows
        candidate = s_curve(threshold, bands, rows)
        if candidate < recall:
            continue
        equal = perms
        while equal > 0 and candidate * tails[equal] < recall:
            equal -= 1
        rule = NearRule(threshold, recall, perms, bands, rows, equal)
        key = (round(rule.dropped(max(threshold - 0.1, 0.0)), 9), bands)
        if best is None or key < best[:2]:
            best = (*key, rule)
    if best is None:  # no banding reaches `recall`: every value must match (one band)
        return NearRule(threshold, recall, perms, 1, perms, perms)
    return best[2]

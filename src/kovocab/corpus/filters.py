"""Stage `shard`, filter: normalised texts -> the reason each one is dropped, or None.

Inputs: texts and the ShardConfig thresholds. Outputs: empty, too-short, too-long,
low-hangul, repetition or repeated-lines (the first that applies), computed with numpy
over the batch. Reference: Gopher quality rules (Rae et al. 2021, appendix A).
"""

from __future__ import annotations

import numpy as np

from kovocab.corpus.charclass import HANGUL, LETTER, codepoints, table
from kovocab.corpus.options import ShardConfig

REASONS = ("empty", "too-short", "too-long", "low-hangul", "repetition", "repeated-lines")
Features = dict[str, np.ndarray]


def repeat_fraction(a: np.ndarray, starts: np.ndarray, lengths: np.ndarray, min_times: int) -> np.ndarray:
    """Per text: the largest fraction of its characters inside runs of one 1-4 character unit.

    A unit of u characters repeated k times shows as u*(k-1) consecutive positions
    with a[i] == a[i-u]; runs of those are found with diff, not a Python loop. The
    NUL padding between texts is wider than u, so no run spans two texts.
    """
    best = np.zeros(len(starts), dtype=np.float64)
    for u in (1, 2, 3, 4):
        if len(a) <= u:
            break
        same = (a[u:] == a[:-u]) & (a[u:] != 0)
        edges = np.diff(same.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        run_start = np.flatnonzero(edges == 1)
        run_len = np.flatnonzero(edges == -1) - run_start
        keep = run_len >= u * (min_times - 1)
        if not keep.any():
            continue
        # Position j of `same` compares characters j and j+u: the run covers
        # characters run_start .. run_start + run_len + u - 1.
        first_char = run_start[keep]
        covered = run_len[keep] + u
        owner = np.searchsorted(starts, first_char, side="right") - 1
        frac = np.bincount(owner, weights=covered, minlength=len(starts)) / np.maximum(lengths, 1)
        np.maximum(best, frac, out=best)
    return best


def features(
    a: np.ndarray, flags: np.ndarray, starts: np.ndarray, lengths: np.ndarray, min_times: int
) -> Features:
    """What the rules look at, per text, from the batch's code points and class bits."""
    # Segment i is text i plus the NUL padding after it, which counts as nothing.
    return {
        "length": lengths,
        "hangul": np.add.reduceat((flags & HANGUL) != 0, starts, dtype=np.int64),
        "letters": np.add.reduceat((flags & (HANGUL | LETTER)) != 0, starts, dtype=np.int64),
        "repeat": repeat_fraction(a, starts, lengths, min_times),
        "multiline": np.logical_or.reduceat(a == 10, starts),
    }


def decide(texts: list[str], f: Features, cfg: ShardConfig) -> list[str | None]:
    """The first reason to drop each text, or None to keep it."""
    lengths = f["length"]
    ratio = f["hangul"] / np.maximum(f["letters"], 1)
    reasons: list[str | None] = [None] * len(texts)
    checks = (
        (lengths == 0, "empty"),
        (lengths < cfg.min_chars, "too-short"),
        (lengths > cfg.max_chars, "too-long"),
        (ratio < cfg.min_hangul_ratio, "low-hangul"),
        (f["repeat"] > cfg.max_repeat_ratio, "repetition"),
    )
    for mask, reason in reversed(checks):  # the earliest check that applies wins
        for i in np.flatnonzero(mask).tolist():
            reasons[i] = reason
    for i in np.flatnonzero(f["multiline"]).tolist():
        if reasons[i] is None:
            lines = texts[i].split("\n")
            if (len(lines) - len(set(lines))) / len(lines) > cfg.max_dup_line_ratio:
                reasons[i] = "repeated-lines"
    return reasons


def filter_reasons(texts: list[str], cfg: ShardConfig) -> list[str | None]:
    """decide() for a batch of already normalised texts."""
    if not texts:
        return []
    a, starts, lengths = codepoints(texts)
    flags = table(cfg.remove_invisible)[a]
    return decide(texts, features(a, flags, starts, lengths, cfg.repeat_min_times), cfg)

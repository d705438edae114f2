"""Completion length statistics and the correlation between reward and length.

Length is the cheapest feature a reward can latch onto: longer answers look more thorough to
people, to AI judges and to reward models trained on either (Singhal et al. 2023, "A Long Way to
Go: Investigating Length Correlations in RLHF"). A high reward-length correlation in the policy's
samples is a warning sign, not proof: for some tasks longer really is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def length_stats(lengths: Sequence[float]) -> dict[str, float]:
    """mean, std, min, p50, p95, max of a list of lengths (tokens or characters)."""
    values = np.asarray(lengths, dtype=float)
    if values.size == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None when either side is constant or there are fewer than 3 points."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} values against {b.size}")
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return None
    r = float(np.corrcoef(a, b)[0, 1])
    return r if math.isfinite(r) else None


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank (what Spearman's rho needs)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    result = np.empty(x.size)
    sorted_x = x[order]
    start = 0
    while start < x.size:
        end = start
        while end + 1 < x.size and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        result[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the ranks (monotone, robust to outliers)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    return pearson(ranks(x), ranks(y))


def reward_length_correlation(scores: Sequence[float], lengths: Sequence[float]) -> dict[str, float | None]:
    return {"pearson": pearson(scores, lengths), "spearman": spearman(scores, lengths)}

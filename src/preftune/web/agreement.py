"""Inter-annotator agreement: Krippendorff's alpha over all raters, Cohen's kappa per pair.

Both read a *table*: {unit: {rater: value}}, one value per rater per unit, missing where a rater
did not label the unit. Values come from votes through `nominal_value` (the choice alone) or
`ordinal_value` (choice and strength on one signed scale).

- Krippendorff's alpha (Krippendorff, "Content Analysis", 2004, ch. 11): alpha = 1 - D_o / D_e,
  observed over expected disagreement from the coincidence matrix; it copes with any number of
  raters and missing values. Computed by the `krippendorff` package.
- Cohen's kappa (Cohen 1960): kappa = (p_o - p_e) / (1 - p_e) over the units both raters labelled,
  with p_e from each rater's own marginal frequencies.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping
from itertools import combinations

Table = Mapping[Hashable, Mapping[str, Hashable]]

NOMINAL_CODES = {"a": 0, "b": 1, "tie": 2, "both_bad": 3, "up": 4, "down": 5}  # up / down: thumbs projects
# Ordinal scale: "A much better" -4 ... tie 0 ... "B much better" +4; strength 1-4 is the distance.
ORDINAL_DOMAIN = list(range(-4, 5))


def nominal_value(choice: str) -> int | None:
    """A vote's choice as a nominal category; skips carry no judgment (None)."""
    return NOMINAL_CODES.get(choice)


def ordinal_value(choice: str, strength: int | None) -> int | None:
    """A vote on the signed ordinal scale, or None when it has no place on it.

    Ties are 0. 'both_bad' says nothing about which is better, and an 'a'/'b' vote without a
    strength has no distance from the tie, so both are left out of the ordinal alpha.
    """
    if choice == "tie":
        return 0
    if choice in ("a", "b") and strength:
        return -strength if choice == "a" else strength
    return None


def krippendorff_alpha(table: Table, level: str = "nominal", value_domain: list | None = None) -> float:
    """Krippendorff's alpha for `table` at `level` ('nominal' or 'ordinal'); NaN when undefined.

    Undefined means no unit has two values, or only one value occurs at all (no disagreement is
    possible, so the ratio has no meaning).
    """
    import krippendorff
    import numpy as np

    raters = sorted({r for row in table.values() for r in row})
    units = [u for u, row in table.items() if sum(v is not None for v in row.values()) >= 2]
    values = {v for u in units for v in table[u].values() if v is not None}
    if not units or len(values) < 2:
        return math.nan
    matrix = np.full((len(raters), len(units)), np.nan)
    for j, unit in enumerate(units):
        for i, rater in enumerate(raters):
            value = table[unit].get(rater)
            if value is not None:
                matrix[i, j] = value
    if level == "ordinal":
        value_domain = value_domain or ORDINAL_DOMAIN
    return float(
        krippendorff.alpha(reliability_data=matrix, level_of_measurement=level, value_domain=value_domain)
    )


def cohen_kappa(first: list[Hashable], second: list[Hashable]) -> float:
    """Cohen's kappa of two raters' labels on the same units, in order; NaN when p_e == 1."""
    if len(first) != len(second):
        raise ValueError(f"kappa needs two equal-length label lists, got {len(first)} and {len(second)}")
    n = len(first)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    count_first, count_second = Counter(first), Counter(second)
    expected = sum(count_first[k] * count_second[k] for k in count_first) / (n * n)
    if expected == 1.0:
        return math.nan
    return (observed - expected) / (1.0 - expected)


def pairwise_kappa(table: Table) -> list[tuple[str, str, int, float]]:
    """(rater, rater, units both labelled, kappa) for every pair of raters, names sorted."""
    raters = sorted({r for row in table.values() for r in row})
    out = []
    for x, y in combinations(raters, 2):
        shared = [row for row in table.values() if row.get(x) is not None and row.get(y) is not None]
        kappa = cohen_kappa([row[x] for row in shared], [row[y] for row in shared])
        out.append((x, y, len(shared), kappa))
    return out

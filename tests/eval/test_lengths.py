"""Length statistics and rank correlations."""

from __future__ import annotations

import pytest

from preftune.eval.lengths import length_stats, pearson, ranks, reward_length_correlation, spearman


def test_length_stats():
    stats = length_stats([1, 2, 3, 4, 10])
    assert stats["mean"] == 4.0 and stats["min"] == 1 and stats["max"] == 10 and stats["p50"] == 3
    assert stats["p95"] == pytest.approx(8.8)  # linear interpolation between 4 and 10
    assert length_stats([])["mean"] == 0.0


def test_ranks_share_ties():
    assert ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_spearman_sees_monotone_relations_pearson_underrates():
    x = [1, 2, 3, 4, 5, 6]
    y = [1, 2, 4, 8, 16, 1000]
    assert spearman(x, y) == pytest.approx(1.0)
    assert pearson(x, y) < 0.8
    assert spearman(x, [-v for v in y]) == pytest.approx(-1.0)


def test_constant_series_have_no_correlation():
    assert pearson([1, 2, 3], [5, 5, 5]) is None
    assert reward_length_correlation([1, 1, 1], [1, 2, 3]) == {"pearson": None, "spearman": None}
    with pytest.raises(ValueError):
        pearson([1, 2, 3], [1, 2])

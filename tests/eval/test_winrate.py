"""Win rate with ties and its Wilson interval against hand computations; length control."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preftune.eval.winrate import comparison_outcomes, fit_logistic, lc_win_rate, wilson_interval, win_rate


def test_win_rate_and_interval_match_a_hand_computation():
    # 10 prompts: 6 wins, 3 losses, 1 tie -> (6 + 0.5) / 10 = 0.65.
    policy = [2, 3, 4, 5, 6, 7, 0, 0, 0, 1]
    ref = [1, 1, 1, 1, 1, 1, 5, 5, 5, 1]
    rate = win_rate(policy, ref)
    assert (rate.wins, rate.losses, rate.ties, rate.n_prompts) == (6, 3, 1, 10)
    assert rate.win_rate == pytest.approx(0.65)
    # Wilson by hand, z = 1.96: center = (0.65 + 1.9208/10) / 1.38416 = 0.608384...,
    # half = 1.96 * sqrt(0.2275/10 + 3.8416/400) / 1.38416 = 0.254600...
    z2 = 1.959963984540054**2
    center = (0.65 + z2 / 20) / (1 + z2 / 10)
    half = 1.959963984540054 * math.sqrt(0.65 * 0.35 / 10 + z2 / 400) / (1 + z2 / 10)
    assert rate.ci95 == pytest.approx((center - half, center + half))
    assert rate.ci95 == pytest.approx((0.3538, 0.8630), abs=1e-3)


def test_ties_count_half_and_tolerance_widens_them():
    assert comparison_outcomes([1.0, 2.0, 3.0], [1.0, 1.95, 3.5]).tolist() == [0.5, 1.0, 0.0]
    assert comparison_outcomes([1.0, 2.0, 3.0], [1.0, 1.95, 3.5], tie_tolerance=0.1).tolist() == [
        0.5,
        0.5,
        0.0,
    ]
    all_ties = win_rate([1, 1, 1, 1], [1, 1, 1, 1])
    assert all_ties.win_rate == 0.5 and all_ties.ties == 4
    lo, hi = all_ties.ci95
    assert lo < 0.5 < hi  # n = 4 is little evidence: the interval stays wide


def test_comparisons_group_by_prompt():
    # Prompt 0: win, win (mean 1); prompt 1: loss, tie (mean 0.25). Unit = prompt: (1 + 0.25) / 2.
    rate = win_rate([3, 3, 0, 1], [1, 1, 1, 1], prompt_index=[0, 0, 1, 1])
    assert rate.win_rate == pytest.approx(0.625)
    assert rate.n_prompts == 2 and rate.ci95 == pytest.approx(wilson_interval(0.625, 2))


def test_wilson_stays_open_at_the_extremes():
    lo, hi = wilson_interval(1.0, 5)
    assert hi == 1.0 and lo == pytest.approx(5 / (5 + 1.959963984540054**2))  # closed form at p = 1


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = np.stack([np.ones(20000), rng.normal(size=20000)], axis=1)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.7 - 1.3 * x[:, 1])))).astype(float)
    assert fit_logistic(x, y, ridge=0.0) == pytest.approx([0.7, -1.3], abs=0.06)


def _synthetic(rng, n, quality_logit, length_coef):
    """Policy answers ~20 tokens longer on average; the judge's preference follows the paper's model."""
    policy_len = rng.normal(60, 15, n)
    ref_len = rng.normal(40, 15, n)
    delta = policy_len - ref_len
    p = 1 / (1 + np.exp(-(quality_logit + length_coef * np.tanh(delta / delta.std()))))
    wins = rng.random(n) < p
    return wins.astype(float), np.full(n, 0.5), policy_len, ref_len


def test_length_control_removes_a_pure_length_effect():
    rng = np.random.default_rng(1)
    policy, ref, policy_len, ref_len = _synthetic(rng, 4000, quality_logit=0.0, length_coef=3.0)
    raw = win_rate(policy, ref).win_rate
    controlled = lc_win_rate(policy, ref, policy_len, ref_len, bootstrap=50)
    assert raw > 0.75  # the judge likes length, and the policy is longer
    assert controlled.lc_win_rate == pytest.approx(0.5, abs=0.04)
    assert controlled.length_coef > 2.0
    lo, hi = controlled.lc_ci95
    assert lo < 0.5 < hi


def test_length_control_keeps_a_real_quality_difference():
    rng = np.random.default_rng(2)
    policy, ref, policy_len, ref_len = _synthetic(rng, 4000, quality_logit=1.0, length_coef=0.0)
    controlled = lc_win_rate(policy, ref, policy_len, ref_len, bootstrap=0)
    assert controlled.lc_win_rate == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)
    assert abs(controlled.length_coef) < 0.3


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2 policy scores but 3"):
        win_rate([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="zero comparisons"):
        win_rate([], [])

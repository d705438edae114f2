"""Playground module 5: the variance and bias of each policy-gradient baseline on the six answers."""

import pytest

from preftune.playground.baselines import baseline_numbers, baselines_state


def test_variance_ordering_of_the_baselines():
    """G = 8, rewards with mean 2.08 and std 1.26. No baseline is worst (its baseline is off by 2.08);
    a critic off by 1.0 (RMS) comes next; RLOO's baseline, the mean of 7 draws, is off by about
    1.26 / sqrt(7) = 0.48, so it beats that critic; an exact critic (E[r] itself) is best. Each gap
    is far beyond the Monte Carlo error of 20,000 batches (about 1%)."""
    none = baseline_numbers("none", 8)["variance"]
    loo = baseline_numbers("leave_one_out", 8)["variance"]
    exact = baseline_numbers("value", 8, value_error=0.0)["variance"]
    wrong = baseline_numbers("value", 8, value_error=1.0)["variance"]
    assert none > 1.2 * wrong and wrong > 1.2 * loo and loo > 1.05 * exact, (none, wrong, loo, exact)
    # A critic as wrong as RLOO's baseline (0.48) gives about the same variance: the group is a critic for free.
    assert baseline_numbers("value", 8, value_error=0.476)["variance"] == pytest.approx(loo, rel=0.1)


def test_leave_one_out_is_unbiased_and_the_group_mean_shrinks_by_g_minus_1_over_g():
    loo = baseline_numbers("leave_one_out", 4)
    mean = baseline_numbers("group_mean", 4)
    assert loo["relative_bias"] < 0.02
    assert mean["relative_bias"] == pytest.approx(1 / 4, abs=0.02)  # E[g] = (G-1)/G x the true gradient


def test_the_group_baselines_variance_falls_with_the_group_size():
    state = baselines_state(4, 0.5)
    curve = state["variance_by_group_size"]["leave_one_out"]
    assert all(a > b for a, b in zip(curve, curve[1:], strict=False))
    assert {r["baseline"] for r in state["rows"]} == {"none", "value", "group_mean", "leave_one_out", "group_mean_std"}
    with pytest.raises(ValueError, match="group size"):
        baselines_state(1, 0.5)

"""KL estimators against exact KL on categorical distributions; penalised rewards; controllers."""

import numpy as np
import pytest
import torch

from preftune.losses.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
)

# Two categorical distributions over 5 outcomes: p is the policy (samples come from it), q the reference.
P = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
Q = np.array([0.3, 0.1, 0.2, 0.2, 0.2])


def exact_kl(p, q):
    # KL(p || q) = sum_x p(x) log(p(x) / q(x)), in numpy, independent of the code under test.
    return float(np.sum(p * np.log(p / q)))


def expectation_under_p(estimator, p, q):
    # E_{x~p}[k(x)] exactly: evaluate the estimator at every outcome and weight by p(x).
    per_outcome = estimator(torch.tensor(np.log(p)), torch.tensor(np.log(q)))
    return float(torch.sum(torch.tensor(p) * per_outcome))


def test_distributions_are_normalised():
    assert P.sum() == pytest.approx(1.0) and Q.sum() == pytest.approx(1.0)


def test_k1_is_unbiased():
    assert expectation_under_p(kl_k1, P, Q) == pytest.approx(exact_kl(P, Q), rel=1e-12)
    # ... though single samples go negative (outcome 0 has p < q).
    assert kl_k1(torch.tensor(np.log(P)), torch.tensor(np.log(Q)))[0].item() < 0


def test_k3_is_unbiased_and_nonnegative():
    assert expectation_under_p(kl_k3, P, Q) == pytest.approx(exact_kl(P, Q), rel=1e-12)
    per_outcome = kl_k3(torch.tensor(np.log(P)), torch.tensor(np.log(Q)))
    assert bool((per_outcome >= 0).all())


def test_k3_nonnegative_on_random_and_extreme_log_probs_in_float32():
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(1000, generator=generator) * 5
    ref = policy + torch.randn(1000, generator=generator) * torch.logspace(-8, 1, 1000)
    values = kl_k3(policy, ref)
    assert values.dtype == torch.float32
    assert bool((values >= 0).all()) and bool(torch.isfinite(values).all())


def test_k3_is_exact_zero_when_distributions_agree():
    logprobs = torch.log(torch.tensor(P))
    assert bool((kl_k3(logprobs, logprobs) == 0).all())


def test_k2_is_biased_but_close_for_near_distributions():
    # Far apart: E[k2] misses the KL by a visible amount.
    far_gap = abs(expectation_under_p(kl_k2, P, Q) - exact_kl(P, Q))
    assert far_gap > 1e-3
    # Near: q = p tilted by 1%; k2 matches KL to second order, so the relative error is small.
    near_q = P * (1 + 0.01 * np.array([1.0, -1.0, 0.5, -0.5, 0.0]))
    near_q = near_q / near_q.sum()
    near_kl = exact_kl(P, near_q)
    near_gap = abs(expectation_under_p(kl_k2, P, near_q) - near_kl)
    assert near_gap < 0.05 * near_kl
    assert near_gap > 0  # still not exact
    assert bool((kl_k2(torch.tensor(np.log(P)), torch.tensor(np.log(Q))) >= 0).all())


def test_estimator_table():
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# Rewards: two responses, the first 3 tokens long, the second 2; log p - log q per token below,
# with garbage on padding.
LOG_RATIO = [[0.5, -0.2, 0.3, 9.9], [0.1, 0.4, 7.0, 7.0]]
MASK = [[1, 1, 1, 0], [1, 1, 0, 0]]
SCORES = [2.0, -1.0]
KL_COEF = 0.1


def reward_inputs():
    ref = torch.full((2, 4), -2.0, dtype=torch.float64)
    policy = ref + torch.tensor(LOG_RATIO, dtype=torch.float64)
    return torch.tensor(SCORES, dtype=torch.float64), policy, ref, torch.tensor(MASK)


def test_penalized_rewards_place_score_at_last_unmasked_token():
    rewards, metrics = kl_penalized_rewards(*reward_inputs(), kl_coef=KL_COEF)
    # -0.1 * k1 at every response token; score added at index 2 (row 0) and 1 (row 1); 0 on padding.
    expected = torch.tensor(
        [[-0.05, 0.02, -0.03 + 2.0, 0.0], [-0.01, -0.04 - 1.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-12)
    # Per-sequence KL sums 0.6 and 0.5.
    assert metrics["objective/kl"].item() == pytest.approx(0.55)
    assert metrics["objective/non_score_reward"].item() == pytest.approx(-0.055)
    assert metrics["objective/scores"].item() == pytest.approx(0.5)
    # ((2 - 0.06) + (-1 - 0.05)) / 2.
    assert metrics["objective/rlhf_reward"].item() == pytest.approx(0.445)


def test_penalized_rewards_with_k3_and_zero_coef():
    scores, policy, ref, mask = reward_inputs()
    rewards, metrics = kl_penalized_rewards(scores, policy, ref, mask, kl_coef=0.0, estimator="k3")
    # No penalty: only the scores remain, at the last tokens.
    expected = torch.zeros(2, 4, dtype=torch.float64)
    expected[0, 2], expected[1, 1] = 2.0, -1.0
    torch.testing.assert_close(rewards, expected, rtol=0, atol=0)
    # The KL is still measured, with k3 = e^-x - 1 + x per token.
    log_ratio = np.array(LOG_RATIO)
    k3 = np.exp(-log_ratio) - 1 + log_ratio
    assert metrics["objective/kl"].item() == pytest.approx((k3[0, :3].sum() + k3[1, :2].sum()) / 2, rel=1e-12)


def test_penalized_rewards_reject_bad_input():
    scores, policy, ref, mask = reward_inputs()
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalized_rewards(scores, policy, ref, mask, kl_coef=KL_COEF, estimator="k4")
    empty_row = mask.clone()
    empty_row[1] = 0
    with pytest.raises(ValueError, match="empty"):
        kl_penalized_rewards(scores, policy, ref, empty_row, kl_coef=KL_COEF)
    with pytest.raises(ValueError, match="scores must have shape"):
        kl_penalized_rewards(scores[:1], policy, ref, mask, kl_coef=KL_COEF)


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=512)
    assert controller.value == 0.05


def test_adaptive_controller_update_rule():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # KL 7 vs target 6: error 1/6, inside the clip. 0.1 * (1 + (1/6) * 256/10000).
    controller.update(current_kl=7.0, n_steps=256)
    expected = 0.1 * (1 + (7 / 6 - 1) * 0.0256)
    assert controller.value == pytest.approx(expected, rel=1e-12)
    # KL 12: error 1, clipped to +0.2.
    controller.update(current_kl=12.0, n_steps=256)
    expected *= 1 + 0.2 * 0.0256
    assert controller.value == pytest.approx(expected, rel=1e-12)
    # KL 0: error -1, clipped to -0.2.
    controller.update(current_kl=0.0, n_steps=256)
    expected *= 1 - 0.2 * 0.0256
    assert controller.value == pytest.approx(expected, rel=1e-12)
    # KL on target: no change.
    controller.update(current_kl=6.0, n_steps=256)
    assert controller.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=1.0, horizon=0)


def test_best_of_n_kl_closed_form_and_exact_discrete_bound():
    from preftune.losses.kl import best_of_n_kl

    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(np.log(2) - 0.5, abs=1e-15)
    assert best_of_n_kl(16) == pytest.approx(np.log(16) - 15 / 16, abs=1e-15)
    values = [best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 64)]
    assert values == sorted(values) and all(v < np.log(n) for v, n in zip(values[1:], (2, 4, 8, 16, 64), strict=True))
    # Exact KL of best-of-n over N equally likely distinct outcomes ranked by score: the kept
    # outcome of rank i has probability (i/N)^n - ((i-1)/N)^n. It approaches the formula from
    # below as N grows (ties make the formula an upper bound).
    for n in (2, 4, 16):
        for outcomes, tolerance in ((10, None), (100_000, 1e-3)):
            ranks = np.arange(1, outcomes + 1) / outcomes
            kept = ranks**n - (ranks - 1 / outcomes) ** n
            exact = float(np.sum(kept * np.log(kept * outcomes)))
            assert exact <= best_of_n_kl(n) + 1e-12
            if tolerance:
                assert exact == pytest.approx(best_of_n_kl(n), abs=tolerance)
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_kl(0)

"""Group baselines (GRPO, Dr. GRPO, RLOO, REINFORCE++) and the group policy loss, on 3-element
tensors whose closed forms are worked out in each docstring. Settings are asymmetric on purpose
(rewards 1, 2, 4; ratios 1.5 and 0.5 on both sides of the clip; gamma 0.5; kl_coef 0.3), so each
variant gives a different number from its neighbours."""

import math

import pytest
import torch

from preftune.losses.advantages import (
    GROUP_STD_EPS,
    group_advantages,
    group_std,
    reinforce_pp_advantages,
    reward_to_go,
    rloo_advantages,
)
from preftune.losses.grpo import group_policy_loss, normalize_token_losses, token_entropy
from preftune.losses.kl import kl_penalized_rewards

SCORES = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)


def test_grpo_advantage_divides_by_the_unbiased_group_std():
    """mean = 7/3; deviations -4/3, -1/3, 5/3; unbiased var = (16 + 1 + 25)/9 / 2 = 7/3,
    std = sqrt(7/3) = 1.5275; A = deviation / (std + 1e-4)."""
    std = math.sqrt(7 / 3)
    assert group_std(SCORES, 3).tolist() == pytest.approx([std] * 3, rel=1e-12)
    expected = [d / (std + GROUP_STD_EPS) for d in (-4 / 3, -1 / 3, 5 / 3)]
    assert group_advantages(SCORES, 3).tolist() == pytest.approx(expected, rel=1e-12)


def test_dr_grpo_advantage_is_the_centred_reward():
    """Dr. GRPO: A_i = r_i - mean = -4/3, -1/3, 5/3 (no std; differs from GRPO by 1/(std+eps) = 0.65)."""
    assert group_advantages(SCORES, 3, scale_by_std=False).tolist() == pytest.approx([-4 / 3, -1 / 3, 5 / 3], rel=1e-12)


def test_rloo_baseline_leaves_the_sample_out():
    """A_1 = 1 - (2 + 4)/2 = -2; A_2 = 2 - (1 + 4)/2 = -0.5; A_3 = 4 - (1 + 2)/2 = 2.5
    (= 3/2 x the centred rewards: G/(G-1) larger than Dr. GRPO's)."""
    assert rloo_advantages(SCORES, 3).tolist() == pytest.approx([-2.0, -0.5, 2.5], rel=1e-12)


def test_groups_are_consecutive_rows_and_an_equal_group_gives_zero():
    """Two groups of 3: [1, 2, 4] and [5, 5, 5]. The second has std 0: GRPO gives 0 there (the eps
    floor), not NaN; the first group's advantages do not see the second's rewards."""
    scores = torch.tensor([1.0, 2.0, 4.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    advantages = group_advantages(scores, 3)
    assert advantages[:3].tolist() == pytest.approx(group_advantages(SCORES, 3).tolist(), rel=1e-12)
    assert advantages[3:].tolist() == [0.0, 0.0, 0.0]
    assert rloo_advantages(scores, 3)[3:].tolist() == [0.0, 0.0, 0.0]


def test_bad_group_shapes_are_refused():
    with pytest.raises(ValueError, match="do not split into groups of 2"):
        group_advantages(SCORES, 2)
    with pytest.raises(ValueError, match="groups of 2 or more"):
        rloo_advantages(SCORES, 1)


def test_reward_to_go_and_reinforce_pp_batch_normalisation():
    """Token rewards r = [1, 0, 2], gamma 0.5: G_3 = 2, G_2 = 0 + 0.5*2 = 1, G_1 = 1 + 0.5*1 = 1.5.
    Batch mean 1.5, unbiased var ((0)^2 + 0.5^2 + 0.5^2)/2 = 0.25, std 0.5: A = [0, -1, 1]."""
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert reward_to_go(rewards, mask, gamma=0.5)[0].tolist() == pytest.approx([1.5, 1.0, 2.0], rel=1e-12)
    assert reinforce_pp_advantages(rewards, mask, gamma=0.5)[0].tolist() == pytest.approx([0.0, -1.0, 1.0], abs=1e-7)


def test_reinforce_pp_with_the_kl_in_the_reward_and_padding():
    """Two completions, 2 and 1 tokens (3 in all); score 3 and 0; per-token k1 KL [0.5, 1] and [2];
    kl_coef 0.3, gamma 1: rewards [-0.15, -0.3 + 3] and [-0.6 + 0]; returns [2.55, 2.7] and [-0.6];
    batch mean 4.65/3 = 1.55; deviations 1.0, 1.15, -2.15; unbiased var (1 + 1.3225 + 4.6225)/2 = 3.4725."""
    policy = torch.tensor([[0.5, 1.0], [2.0, float("nan")]], dtype=torch.float64)
    reference = torch.zeros(2, 2, dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    rewards, _ = kl_penalized_rewards(torch.tensor([3.0, 0.0], dtype=torch.float64), policy, reference, mask, 0.3, "k1")
    advantages = reinforce_pp_advantages(rewards, mask)
    std = math.sqrt(3.4725)
    assert advantages[mask].tolist() == pytest.approx([1.0 / std, 1.15 / std, -2.15 / std], rel=1e-6)
    assert advantages[1, 1].item() == 0.0


# Per-token losses of two completions: [1, 2] and [4] (3 tokens); L = 4.
LOSSES = torch.tensor([[1.0, 2.0], [4.0, float("nan")]], dtype=torch.float64)
MASK = torch.tensor([[True, True], [True, False]])


def test_loss_normalisations_differ_as_their_papers_say():
    """sequence: ((1 + 2)/2 + 4)/2 = 2.75 (GRPO); token: 7/3 (DAPO); constant: 7/(2 x 4) = 0.875 (Dr. GRPO)."""
    assert normalize_token_losses(LOSSES, MASK, "sequence").item() == pytest.approx(2.75, rel=1e-12)
    assert normalize_token_losses(LOSSES, MASK, "token").item() == pytest.approx(7 / 3, rel=1e-12)
    assert normalize_token_losses(LOSSES, MASK, "constant", 4).item() == pytest.approx(0.875, rel=1e-12)
    with pytest.raises(ValueError, match="max_completion_length"):
        normalize_token_losses(LOSSES, MASK, "constant")
    with pytest.raises(ValueError, match="unknown loss normalization"):
        normalize_token_losses(LOSSES, MASK, "mean")


def policy_inputs():
    """Old log-probs 0, so ratio = exp(new). Completion 1 (A = +2): ratios 1.5 and 0.5; completion 2
    (A = -1): ratio 0.5, plus a padded token holding e^3 that must not count."""
    new = torch.tensor([[1.5, 0.5], [0.5, math.exp(3.0)]], dtype=torch.float64).log().requires_grad_(True)
    return new, torch.zeros(2, 2, dtype=torch.float64), torch.tensor([2.0, -1.0], dtype=torch.float64)


def test_clipped_surrogate_per_normalisation_and_clip_metrics():
    """Per token, l = -min(ratio A, clip(ratio, 0.8, 1.2) A):
    (1.5, +2): min(3.0, 2.4) -> -2.4, clipped high;  (0.5, +2): min(1.0, 1.6) -> -1.0, not clipped;
    (0.5, -1): min(-0.5, -0.8) -> 0.8, clipped low.
    sequence: ((-2.4 - 1.0)/2 + 0.8)/2 = -0.45; token: -2.6/3; constant (L = 4): -2.6/8 = -0.325.
    Clip ratios over the 3 tokens: low 1/3, high 1/3, region 2/3."""
    for normalization, expected in (("sequence", -0.45), ("token", -2.6 / 3), ("constant", -0.325)):
        new, old, advantages = policy_inputs()
        loss, metrics = group_policy_loss(new, old, advantages, MASK, clip_range=0.2, normalization=normalization,
                                          max_completion_length=4)  # fmt: skip
        assert loss.item() == pytest.approx(expected, rel=1e-12), normalization
        assert metrics["policy_loss"].item() == pytest.approx(expected, rel=1e-12)
        assert "kl" not in metrics
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(2 / 3)


def test_kl_in_the_loss_adds_k3_and_its_gradient():
    """Reference log-probs 0, so with p = log ratio the k3 term is exp(-p) + p - 1:
    1/1.5 + log 1.5 - 1 = 0.0721318 and 2 + log 0.5 - 1 = 0.3068528 (twice).
    Token-normalised loss: (-2.6 + 0.3 (0.0721318 + 2 x 0.3068528)) / 3.
    Gradient d/dp: surrogate -A ratio where unclipped, 0 where clipped; k3 gives 0.3 (1 - e^-p);
    over 3 tokens: token 1: 0.3 (1 - 1/1.5)/3 = 0.0333; token 2: (-2 x 0.5 + 0.3 (1 - 2))/3 = -1.3/3;
    token 3: 0.3 (1 - 2)/3 = -0.1; padding 0. With k1 (p - q) the KL is log 1.5 and log 0.5 instead."""
    new, old, advantages = policy_inputs()
    reference = torch.zeros(2, 2, dtype=torch.float64)
    loss, metrics = group_policy_loss(new, old, advantages, MASK, normalization="token", ref_logprobs=reference,
                                      kl_coef=0.3)  # fmt: skip
    k3 = [1 / 1.5 + math.log(1.5) - 1, 2 + math.log(0.5) - 1, 2 + math.log(0.5) - 1]
    assert loss.item() == pytest.approx((-2.6 + 0.3 * sum(k3)) / 3, rel=1e-12)
    assert metrics["kl"].item() == pytest.approx(sum(k3) / 3, rel=1e-12)
    assert metrics["policy_loss"].item() == pytest.approx(-2.6 / 3, rel=1e-12)
    loss.backward()
    expected_grad = [[0.3 * (1 - 1 / 1.5) / 3, -1.3 / 3], [-0.1, 0.0]]
    torch.testing.assert_close(new.grad, torch.tensor(expected_grad, dtype=torch.float64), rtol=1e-10, atol=1e-12)

    new, old, advantages = policy_inputs()
    _, metrics = group_policy_loss(new, old, advantages, MASK, normalization="token", ref_logprobs=reference,
                                   kl_coef=0.3, kl_estimator="k1")  # fmt: skip
    assert metrics["kl"].item() == pytest.approx((math.log(1.5) + 2 * math.log(0.5)) / 3, rel=1e-12)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        group_policy_loss(new, old, advantages, MASK, ref_logprobs=reference, kl_coef=0.3, kl_estimator="k9")


def test_token_entropy_of_a_three_way_distribution():
    """p = (1/2, 1/4, 1/4): H = 1/2 log 2 + 2 x 1/4 log 4 = 1.5 log 2; a -inf logit (p = 0) adds 0, not NaN."""
    logits = torch.tensor([[[math.log(0.5), math.log(0.25), math.log(0.25)]]], dtype=torch.float64)
    assert token_entropy(logits).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    masked = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    assert token_entropy(masked).item() == pytest.approx(math.log(2), rel=1e-6)

"""PPO clipped policy and value losses on small tensors with hand-computed values."""

import math

import numpy as np
import pytest
import torch

from preftune.losses.ppo import clipped_policy_loss, clipped_value_loss

CLIP = 0.2

# Per-token cases, old log-probs 0 so new log-probs are log(ratio):
#   (ratio 1.5, A=+2)  ratio above 1+c, pushed up further by A>0  -> clipped: loss -2*1.2 = -2.4
#   (ratio 0.5, A=+2)  below 1-c but A>0 wants it up              -> unclipped: loss -2*0.5 = -1.0
#   (ratio 1.5, A=-1)  above 1+c but A<0 wants it down            -> unclipped: loss 1.5
#   (ratio 0.5, A=-1)  below 1-c, pushed down further by A<0      -> clipped: loss 0.8
#   (ratio 1.1, A=+2)  inside the trust region                    -> unclipped: loss -2.2
#   padding: ratio e^3, A=100, must not count
RATIOS = [[1.5, 0.5, 1.5], [0.5, 1.1, math.exp(3.0)]]
ADVANTAGES = [[2.0, 2.0, -1.0], [-1.0, 2.0, 100.0]]
MASK = [[1, 1, 1], [1, 1, 0]]


def policy_inputs(dtype=torch.float64):
    new_logprobs = torch.tensor(RATIOS, dtype=dtype).log().requires_grad_(True)
    old_logprobs = torch.zeros(2, 3, dtype=dtype)
    return new_logprobs, old_logprobs, torch.tensor(ADVANTAGES, dtype=dtype), torch.tensor(MASK)


def test_policy_loss_closed_form():
    new_logprobs, old_logprobs, advantages, mask = policy_inputs()
    loss, metrics = clipped_policy_loss(new_logprobs, old_logprobs, advantages, mask, clip_range=CLIP)
    # Mean of -2.4, -1.0, 1.5, 0.8, -2.2 over the five unmasked tokens.
    assert loss.item() == pytest.approx(-3.3 / 5, rel=1e-12)
    assert metrics["loss/policy_avg"].item() == pytest.approx(-3.3 / 5, rel=1e-12)
    # Two of five tokens clipped (cases 1 and 4).
    assert metrics["policy/clipfrac_avg"].item() == pytest.approx(2 / 5)
    # Mean ratio (1.5 + 0.5 + 1.5 + 0.5 + 1.1) / 5.
    assert metrics["val/ratio"].item() == pytest.approx(5.1 / 5, rel=1e-12)
    # k3: mean of (r - 1 - log r).
    ratios = np.array([1.5, 0.5, 1.5, 0.5, 1.1])
    assert metrics["policy/approxkl_avg"].item() == pytest.approx(
        np.mean(ratios - 1 - np.log(ratios)), rel=1e-12
    )


def test_policy_gradient_is_cut_exactly_where_clipped():
    new_logprobs, old_logprobs, advantages, mask = policy_inputs()
    loss, _ = clipped_policy_loss(new_logprobs, old_logprobs, advantages, mask, clip_range=CLIP)
    loss.backward()
    # d/d log r of -A*r is -A*r, divided by the 5 tokens of the mean; clipped and padded tokens get 0.
    expected = torch.tensor([[0.0, -2 * 0.5 / 5, 1 * 1.5 / 5], [0.0, -2 * 1.1 / 5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(new_logprobs.grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
@pytest.mark.parametrize("ratio", [0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0])
def test_clipping_engages_only_outside_the_range_in_the_advantage_direction(ratio, advantage):
    new_logprobs = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, metrics = clipped_policy_loss(
        new_logprobs,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([[advantage]], dtype=torch.float64),
        torch.ones(1, 1),
        clip_range=CLIP,
    )
    loss.backward()
    # A>0 is clipped above 1+c only; A<0 below 1-c only.
    should_clip = ratio > 1 + CLIP if advantage > 0 else ratio < 1 - CLIP
    assert metrics["policy/clipfrac_avg"].item() == float(should_clip)
    if should_clip:
        assert new_logprobs.grad.item() == 0.0
        # The loss sits at the clip boundary value.
        boundary = 1 + CLIP if advantage > 0 else 1 - CLIP
        assert loss.item() == pytest.approx(-advantage * boundary)
    else:
        assert new_logprobs.grad.item() == pytest.approx(-advantage * ratio)
        assert loss.item() == pytest.approx(-advantage * ratio)


def test_policy_mask_honoured():
    new_logprobs, old_logprobs, advantages, mask = policy_inputs()
    loss, metrics = clipped_policy_loss(new_logprobs, old_logprobs, advantages, mask)
    # Changing everything at the padded position changes nothing.
    other_new = new_logprobs.detach().clone()
    other_new[1, 2] = -40.0
    other_advantages = advantages.clone()
    other_advantages[1, 2] = -1e6
    other_loss, other_metrics = clipped_policy_loss(other_new, old_logprobs, other_advantages, mask)
    assert other_loss.item() == loss.item()
    for name in metrics:
        assert other_metrics[name].item() == metrics[name].item()


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    # At the first minibatch of an epoch new == old: the loss is -mean(A) and the KL is 0.
    advantages = torch.tensor([[0.3, -1.2, 0.6]], dtype=torch.float32)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float32)
    loss, metrics = clipped_policy_loss(logprobs, logprobs, advantages, torch.ones(1, 3))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    assert metrics["policy/approxkl_avg"].item() == 0.0
    assert metrics["policy/clipfrac_avg"].item() == 0.0


# Value cases with c = 0.2, old -> new, return R:
#   0.5 -> 1.0, R=1: unclipped error 0, clipped value 0.7 -> error 0.09   (clipped wins)
#   0.5 -> 2.0, R=0: unclipped error 4, clipped value 0.7 -> error 0.49   (unclipped wins)
#   0.1 -> 0.0, R=1: inside the range, both errors 1
#   padding: garbage
NEW_VALUES = [[1.0, 2.0, 0.0, 50.0]]
OLD_VALUES = [[0.5, 0.5, 0.1, -50.0]]
RETURNS = [[1.0, 0.0, 1.0, 1000.0]]
VALUE_MASK = [[1, 1, 1, 0]]


def test_value_loss_closed_form_and_gradient():
    new_values = torch.tensor(NEW_VALUES, dtype=torch.float64, requires_grad=True)
    loss, metrics = clipped_value_loss(
        new_values,
        torch.tensor(OLD_VALUES, dtype=torch.float64),
        torch.tensor(RETURNS, dtype=torch.float64),
        torch.tensor(VALUE_MASK),
        clip_range_value=CLIP,
    )
    # 0.5 * mean(0.09, 4, 1).
    assert loss.item() == pytest.approx(0.5 * 5.09 / 3, rel=1e-12)
    assert metrics["loss/value_avg"].item() == pytest.approx(0.5 * 5.09 / 3, rel=1e-12)
    assert metrics["val/clipfrac_avg"].item() == pytest.approx(1 / 3)
    loss.backward()
    # 0.5 * 2 (v - R) / 3 where unclipped; 0 where the clipped error won or the mask is off.
    expected = torch.tensor([[0.0, 2.0 / 3, -1.0 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(new_values.grad, expected, rtol=1e-12, atol=1e-15)


def test_value_loss_without_movement_is_half_mse():
    values = torch.tensor([[0.2, -0.4]])
    returns = torch.tensor([[1.2, 0.6]])
    loss, metrics = clipped_value_loss(values, values, returns, torch.ones(1, 2))
    # 0.5 * mean(1, 1).
    assert loss.item() == pytest.approx(0.5)
    assert metrics["val/clipfrac_avg"].item() == 0.0

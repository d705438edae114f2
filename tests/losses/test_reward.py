"""Bradley-Terry reward-model loss against a hand computation."""

import math

import pytest
import torch

from preftune.losses.reward import bradley_terry

# Reward gaps r_c - r_r = [1, -1, 0]: right, wrong, tie.
CHOSEN = [2.0, 0.5, -1.0]
REJECTED = [1.0, 1.5, -1.0]


def rewards(requires_grad=False, dtype=torch.float64):
    return (
        torch.tensor(CHOSEN, dtype=dtype, requires_grad=requires_grad),
        torch.tensor(REJECTED, dtype=dtype, requires_grad=requires_grad),
    )


def test_loss_matches_hand_computation():
    loss, _ = bradley_terry(*rewards())
    # -log sigmoid(g) = log(1 + e^-g) for g = 1, -1, 0.
    expected = [math.log(1 + math.exp(-1)), math.log(1 + math.e), math.log(2)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_metrics_match_hand_computation():
    loss, metrics = bradley_terry(*rewards())
    assert metrics["loss"].item() == pytest.approx(loss.mean().item())
    # Only the first pair is strictly right; the tie does not count.
    assert metrics["accuracy"].item() == pytest.approx(1 / 3)
    # Mean gap (1 - 1 + 0) / 3.
    assert metrics["margin"].item() == pytest.approx(0.0, abs=1e-12)
    # All six rewards: 2, 0.5, -1, 1, 1.5, -1.
    assert metrics["mean_reward"].item() == pytest.approx(0.5)
    assert metrics["min_reward"].item() == -1.0
    assert metrics["max_reward"].item() == 2.0
    assert all(value.grad_fn is None for value in metrics.values())


def test_margin_shifts_the_loss():
    # A margin of 1 on the first pair asks for a gap above 1: its logit drops from 1 to 0.
    loss, metrics = bradley_terry(*rewards(), margin=torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert loss[0].item() == pytest.approx(math.log(2), rel=1e-12)
    assert loss[1].item() == pytest.approx(math.log(1 + math.e), rel=1e-12)
    # The reported margin is the model's gap, not the gap minus the target.
    assert metrics["margin"].item() == pytest.approx(0.0, abs=1e-12)
    # A scalar margin shifts every pair.
    shifted, _ = bradley_terry(*rewards(), margin=0.5)
    unshifted, _ = bradley_terry(*rewards())
    assert bool((shifted > unshifted).all())


def test_centering_term_adds_squared_reward_sum():
    plain, _ = bradley_terry(*rewards())
    centred, _ = bradley_terry(*rewards(), center_coef=0.01)
    # (r_c + r_r)^2 = 9, 4, 4.
    torch.testing.assert_close(
        centred - plain, torch.tensor([0.09, 0.04, 0.04], dtype=torch.float64), rtol=1e-12, atol=1e-15
    )


def test_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = rewards(requires_grad=True)
    loss, _ = bradley_terry(chosen, rejected)
    loss.sum().backward()
    assert bool((chosen.grad < 0).all()) and bool((rejected.grad > 0).all())
    # d/dr_c [-log sigmoid(g)] = -sigmoid(-g) = -1/(1+e^g).
    expected = torch.tensor([-1 / (1 + math.e), -1 / (1 + math.exp(-1)), -0.5], dtype=torch.float64)
    torch.testing.assert_close(chosen.grad, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(rejected.grad, -expected, rtol=1e-12, atol=0)


def test_centering_gradient_pulls_pair_sum_to_zero():
    # With equal rewards the BT gradient cancels in the sum; what is left is 2*c*(r_c + r_r) on each.
    chosen = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    loss, _ = bradley_terry(chosen, rejected, center_coef=0.1)
    loss.sum().backward()
    assert (chosen.grad + rejected.grad).item() == pytest.approx(2 * 2 * 0.1 * 6.0)


def test_float32_inputs():
    loss, metrics = bradley_terry(*rewards(dtype=torch.float32))
    assert loss.dtype == torch.float32
    assert metrics["accuracy"].dtype == torch.float32


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        bradley_terry(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        bradley_terry(torch.zeros(3, 1), torch.zeros(3, 1))

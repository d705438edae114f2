"""GAE on hand-computed examples; masked statistics and whitening."""

import numpy as np
import pytest
import torch

from preftune.losses.advantages import gae, masked_mean, masked_var, masked_whiten

NAN = float("nan")


def test_masked_mean_ignores_padding_even_nan():
    values = torch.tensor([[1.0, 2.0, NAN], [4.0, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1 + 2 + 4) / 3.
    assert masked_mean(values, mask).item() == pytest.approx(7 / 3)
    # Per row: 1.5 and 4.
    torch.testing.assert_close(masked_mean(values, mask, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_mean_of_nothing_is_nan():
    assert torch.isnan(masked_mean(torch.ones(2, 2), torch.zeros(2, 2)))


def test_masked_var_matches_numpy_ddof():
    values = torch.tensor([[1.0, 3.0, 99.0], [2.0, 6.0, -99.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.float64)
    kept = np.array([1.0, 3.0, 2.0, 6.0])
    assert masked_var(values, mask).item() == pytest.approx(np.var(kept, ddof=1), rel=1e-12)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(np.var(kept), rel=1e-12)


def test_whiten_gives_mean_zero_and_unit_variance_over_the_mask():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 6, generator=generator, dtype=torch.float64) * 3 + 5
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    values[~mask.bool()] = NAN
    whitened = masked_whiten(values, mask)
    kept = whitened[mask.bool()].numpy()
    assert kept.mean() == pytest.approx(0.0, abs=1e-12)
    assert np.var(kept, ddof=1) == pytest.approx(1.0, rel=1e-6)
    # Padding comes back as exact zeros, not NaN.
    assert bool((whitened[~mask.bool()] == 0).all())


def test_whiten_without_shift_keeps_the_mean():
    values = torch.tensor([[1.0, 2.0, 6.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    scaled = masked_whiten(values, mask, shift_mean=False)
    kept = scaled[0, :3].numpy()
    assert kept.mean() == pytest.approx(3.0, rel=1e-9)
    assert np.var(kept, ddof=1) == pytest.approx(1.0, rel=1e-6)


def test_whiten_constant_values_stays_finite():
    whitened = masked_whiten(torch.full((2, 3), 4.0), torch.ones(2, 3))
    assert bool((whitened == 0).all())


def test_gae_hand_computed_example():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    # Row 0: 3 response tokens, then padding (garbage reward and value there).
    # Row 1: 4 response tokens.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.1, 0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.4, 0.6, 7.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    # Row 0, backwards from the last response token (V after it is 0):
    #   t=2: delta = 1.0 + 0.9*0   - 0.6 =  0.4    A2 = 0.4
    #   t=1: delta = 0   + 0.9*0.6 - 0.4 =  0.14   A1 = 0.14 + 0.72*0.4   = 0.428
    #   t=0: delta = 0   + 0.9*0.4 - 0.5 = -0.14   A0 = -0.14 + 0.72*0.428 = 0.16816
    # Row 1:
    #   t=3: delta = 1 + 0.9*0 - 1 = 0       A3 = 0
    #   t=2: delta = 0 + 0.9*1 - 1 = -0.1    A2 = -0.1
    #   t=1: delta = 0 + 0.9*1 - 1 = -0.1    A1 = -0.1 + 0.72*(-0.1)   = -0.172
    #   t=0: delta = 0.1 + 0.9*1 - 1 = 0     A0 = 0 + 0.72*(-0.172)    = -0.12384
    expected_advantages = torch.tensor(
        [[0.16816, 0.428, 0.4, 0.0], [-0.12384, -0.172, -0.1, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(advantages, expected_advantages, rtol=0, atol=1e-12)
    # Returns = A + V on the response, 0 on padding.
    expected_returns = torch.tensor(
        [[0.66816, 0.828, 1.0, 0.0], [0.87616, 0.828, 0.9, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(returns, expected_returns, rtol=0, atol=1e-12)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    values = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    # Padding holds NaN: it must not reach the response.
    rewards[~mask.bool()] = NAN
    values[~mask.bool()] = NAN
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    keep = mask.bool().numpy()
    rewards_np = np.where(keep, rewards.numpy(), 0.0)
    values_np = np.where(keep, values.numpy(), 0.0)
    # Reward-to-go: reversed cumulative sum along each row.
    reward_to_go = np.cumsum(rewards_np[:, ::-1], axis=1)[:, ::-1]
    expected = np.where(keep, reward_to_go - values_np, 0.0)
    np.testing.assert_allclose(advantages.numpy(), expected, rtol=0, atol=1e-12)
    # The returns are then the reward-to-go itself (Monte Carlo returns).
    np.testing.assert_allclose(returns.numpy(), np.where(keep, reward_to_go, 0.0), rtol=0, atol=1e-12)


def test_gae_with_lambda_zero_is_one_step_td():
    rewards = torch.tensor([[0.2, -0.1, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.3, 0.5, 0.4]], dtype=torch.float64)
    advantages, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.0)
    # delta_t = r_t + 0.5 V_{t+1} - V_t: 0.2 + 0.25 - 0.3, -0.1 + 0.2 - 0.5, 1.0 + 0 - 0.4.
    torch.testing.assert_close(
        advantages, torch.tensor([[0.15, -0.4, 0.6]], dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_gae_float32_and_shape_check():
    advantages, returns = gae(torch.ones(2, 3), torch.zeros(2, 3), torch.ones(2, 3), gamma=1.0, lam=0.95)
    assert advantages.dtype == torch.float32 and returns.shape == (2, 3)
    with pytest.raises(ValueError, match="same"):
        gae(torch.ones(2, 3), torch.zeros(2, 4), torch.ones(2, 3), gamma=1.0, lam=0.95)

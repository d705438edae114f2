"""DPO-family losses against closed forms written out in numpy, plus gradient signs and metrics."""

import inspect

import numpy as np
import pytest
import torch

from preftune.losses.dpo import (
    DPO_LOSS_OPTIONS,
    DPO_LOSSES,
    REFERENCE_FREE_LOSSES,
    cdpo_loss,
    hinge_loss,
    ipo_loss,
    robust_loss,
    sft_nll,
    sigmoid_loss,
    simpo_loss,
)

# Three pairs. With these numbers h = (pc - pr) - (rc - rr) = [1.5, 0.0, -1.0]: one pair ranked
# right, one tie, one ranked wrong.
POLICY_CHOSEN = [-5.0, -3.0, -8.0]
POLICY_REJECTED = [-6.0, -2.0, -8.5]
REF_CHOSEN = [-5.5, -3.5, -7.5]
REF_REJECTED = [-5.0, -2.5, -9.0]
CHOSEN_LENGTHS = [4, 2, 5]
REJECTED_LENGTHS = [3, 6, 2]
BETA = 0.5


def np_logsigmoid(x):
    # log(1 / (1 + e^-x)), written independently of torch.
    return -np.log1p(np.exp(-np.asarray(x, dtype=np.float64)))


def np_margin():
    pc, pr, rc, rr = map(np.array, (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED))
    return (pc - pr) - (rc - rr)


def tensors(requires_grad=False, dtype=torch.float64):
    def make(values):
        return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)

    return (
        make(POLICY_CHOSEN),
        make(POLICY_REJECTED),
        make(REF_CHOSEN),
        make(REF_REJECTED),
    )


def lengths():
    return {
        "chosen_lengths": torch.tensor(CHOSEN_LENGTHS),
        "rejected_lengths": torch.tensor(REJECTED_LENGTHS),
    }


def test_margin_fixture_is_what_the_comments_say():
    np.testing.assert_allclose(np_margin(), [1.5, 0.0, -1.0])


def test_sigmoid_matches_closed_form():
    loss, _ = sigmoid_loss(*tensors(), beta=BETA)
    expected = -np_logsigmoid(BETA * np_margin())
    # Hand values: -log sigmoid(0.75) = log(1 + e^-0.75), -log sigmoid(0) = log 2, -log sigmoid(-0.5).
    np.testing.assert_allclose(expected, [0.386871, np.log(2), 0.974077], atol=1e-6)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    assert loss.shape == (3,)


def test_cdpo_matches_closed_form():
    eps = 0.1
    loss, _ = cdpo_loss(*tensors(), beta=BETA, label_smoothing=eps)
    x = BETA * np_margin()
    expected = -(1 - eps) * np_logsigmoid(x) - eps * np_logsigmoid(-x)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)


def test_robust_matches_closed_form():
    eps = 0.1
    loss, _ = robust_loss(*tensors(), beta=BETA, label_smoothing=eps)
    x = BETA * np_margin()
    expected = ((1 - eps) * -np_logsigmoid(x) - eps * -np_logsigmoid(-x)) / (1 - 2 * eps)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)


def test_robust_is_unbiased_under_label_flips():
    # rDPO's defining property: averaging over the observed label (kept w.p. 1-eps, flipped w.p.
    # eps) gives the clean DPO loss. A flipped label swaps chosen and rejected, i.e. h -> -h.
    eps = 0.2
    pc, pr, rc, rr = tensors()
    as_labelled, _ = robust_loss(pc, pr, rc, rr, beta=BETA, label_smoothing=eps)
    flipped, _ = robust_loss(pr, pc, rr, rc, beta=BETA, label_smoothing=eps)
    clean, _ = sigmoid_loss(pc, pr, rc, rr, beta=BETA)
    torch.testing.assert_close((1 - eps) * as_labelled + eps * flipped, clean, rtol=1e-12, atol=1e-12)


def test_ipo_summed_matches_closed_form():
    loss, _ = ipo_loss(*tensors(), beta=BETA)
    # Target margin 1/(2*0.5) = 1: (1.5-1)^2, (0-1)^2, (-1-1)^2.
    np.testing.assert_allclose(loss.numpy(), [0.25, 1.0, 4.0], rtol=1e-12)


def test_ipo_target_is_one_over_two_beta_at_a_beta_where_the_candidates_differ():
    # At beta 0.5 the targets 1/(2 beta), 2 beta and 1 coincide; at 0.2 they are 2.5, 0.4 and 1
    # (and 1/beta = 5), so only the right one gives (1.5-2.5)^2, (0-2.5)^2, (-1-2.5)^2.
    loss, _ = ipo_loss(*tensors(), beta=0.2)
    np.testing.assert_allclose(loss.numpy(), [1.0, 6.25, 12.25], rtol=1e-12)


def test_ipo_length_normalized_matches_closed_form():
    loss, metrics = ipo_loss(*tensors(), beta=BETA, length_normalize=True, **lengths())
    pc, pr, rc, rr = map(np.array, (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED))
    chosen_ratio = (pc - rc) / np.array(CHOSEN_LENGTHS)
    rejected_ratio = (pr - rr) / np.array(REJECTED_LENGTHS)
    expected = (chosen_ratio - rejected_ratio - 1 / (2 * BETA)) ** 2
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    # The logged rewards stay the implicit DPO reward, beta * summed log-ratio, as TRL logs them.
    assert metrics["rewards/chosen"].item() == pytest.approx(BETA * (pc - rc).mean(), rel=1e-12)
    # And the default really is the summed form: the two differ on this data.
    summed, _ = ipo_loss(*tensors(), beta=BETA, **lengths())
    assert not torch.allclose(summed, loss)


def test_hinge_matches_closed_form():
    loss, _ = hinge_loss(*tensors(), beta=BETA)
    # relu(1 - 0.5*h): 1 - 0.75, 1 - 0, 1 + 0.5.
    np.testing.assert_allclose(loss.numpy(), [0.25, 1.0, 1.5], rtol=1e-12)
    # A large margin is past the hinge: zero loss.
    big, _ = hinge_loss(
        torch.tensor([0.0], dtype=torch.float64),
        torch.tensor([-5.0], dtype=torch.float64),
        torch.tensor([0.0], dtype=torch.float64),
        torch.tensor([0.0], dtype=torch.float64),
        beta=BETA,
    )
    assert big.item() == 0.0


def test_simpo_matches_closed_form_without_reference():
    gamma = 0.3
    beta = 2.0
    pc, pr, _, _ = tensors()
    loss, metrics = simpo_loss(pc, pr, None, None, beta=beta, gamma=gamma, **lengths())
    chosen_rewards = beta * np.array(POLICY_CHOSEN) / np.array(CHOSEN_LENGTHS)
    rejected_rewards = beta * np.array(POLICY_REJECTED) / np.array(REJECTED_LENGTHS)
    expected = -np_logsigmoid(chosen_rewards - rejected_rewards - gamma)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(chosen_rewards.mean(), rel=1e-12)
    assert metrics["rewards/rejected"].item() == pytest.approx(rejected_rewards.mean(), rel=1e-12)
    # Reference log-probs, if passed anyway, change nothing.
    with_ref, _ = simpo_loss(*tensors(), beta=beta, gamma=gamma, **lengths())
    torch.testing.assert_close(with_ref, loss)


def test_simpo_gamma_shifts_the_loss_up():
    pc, pr, _, _ = tensors()
    without, _ = simpo_loss(pc, pr, None, None, beta=2.0, gamma=0.0, **lengths())
    with_margin, _ = simpo_loss(pc, pr, None, None, beta=2.0, gamma=1.0, **lengths())
    assert bool((with_margin > without).all())


def test_sft_nll_is_one_token_mean_over_the_batch():
    nll, metrics = sft_nll(torch.tensor(POLICY_CHOSEN, dtype=torch.float64), torch.tensor(CHOSEN_LENGTHS))
    # (5 + 3 + 8) / (4 + 2 + 5) = 16/11: every chosen token weighs the same (TRL's "sft" term), not
    # the mean of the per-pair means (1.25 + 1.5 + 1.6) / 3 = 1.45.
    assert nll.item() == pytest.approx(16 / 11, rel=1e-12)
    assert metrics["nll_loss"].item() == pytest.approx(16 / 11, rel=1e-12)


def test_cdpo_and_robust_reduce_to_sigmoid_at_eps_zero():
    plain, _ = sigmoid_loss(*tensors(), beta=BETA)
    conservative, _ = cdpo_loss(*tensors(), beta=BETA, label_smoothing=0.0)
    robust, _ = robust_loss(*tensors(), beta=BETA, label_smoothing=0.0)
    torch.testing.assert_close(conservative, plain, rtol=0, atol=0)
    torch.testing.assert_close(robust, plain, rtol=0, atol=0)


def test_robust_differs_from_cdpo_for_positive_eps():
    conservative, _ = cdpo_loss(*tensors(), beta=BETA, label_smoothing=0.1)
    robust, _ = robust_loss(*tensors(), beta=BETA, label_smoothing=0.1)
    difference = (robust - conservative).abs()
    # They differ wherever h != 0 (pairs 1 and 3) ...
    assert bool((difference[[0, 2]] > 0.1).all()), difference
    # ... and agree at h = 0, where both equal log 2 whatever eps is.
    assert difference[1].item() == pytest.approx(0.0, abs=1e-12)
    assert robust[1].item() == pytest.approx(np.log(2), rel=1e-12)


def gradients(loss_fn, **kwargs):
    pc, pr, rc, rr = tensors(requires_grad=True)
    loss, _ = loss_fn(pc, pr, rc, rr, beta=kwargs.pop("beta", BETA), **kwargs)
    loss.sum().backward()
    return pc.grad, pr.grad


@pytest.mark.parametrize(
    ("loss_fn", "options"),
    [
        (sigmoid_loss, {}),
        (cdpo_loss, {"label_smoothing": 0.1}),
        (robust_loss, {"label_smoothing": 0.1}),
        (hinge_loss, {}),  # beta*h < 1 on every pair here, so the hinge is active
        (simpo_loss, {"gamma": 0.5, **lengths()}),
    ],
)
def test_gradient_raises_chosen_and_lowers_rejected(loss_fn, options):
    chosen_grad, rejected_grad = gradients(loss_fn, **options)
    # Gradient descent moves against the gradient: d/d pi_c < 0 raises pi_c, d/d pi_r > 0 lowers pi_r.
    assert bool((chosen_grad < 0).all()), chosen_grad
    assert bool((rejected_grad > 0).all()), rejected_grad


def test_sigmoid_gradient_closed_form():
    chosen_grad, rejected_grad = gradients(sigmoid_loss)
    # d/dpc [-log sigmoid(beta h)] = -beta * sigmoid(-beta h); d/dpr is its negative.
    x = BETA * np_margin()
    expected = -BETA / (1 + np.exp(x))
    np.testing.assert_allclose(chosen_grad.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(rejected_grad.numpy(), -expected, rtol=1e-12)


def test_ipo_gradient_sign_depends_on_side_of_target():
    # Target margin 1/(2*0.5) = 1; h = [1.5, 0, -1]: the first pair overshoots, the others fall short.
    chosen_grad, rejected_grad = gradients(ipo_loss)
    overshoot = torch.tensor([True, False, False])
    # Past the target IPO pulls back: lowers pi_c and raises pi_r.
    assert bool((chosen_grad[overshoot] > 0).all()) and bool((rejected_grad[overshoot] < 0).all())
    # Short of the target it pushes like DPO.
    assert bool((chosen_grad[~overshoot] < 0).all()) and bool((rejected_grad[~overshoot] > 0).all())
    # Closed form: dL/dpc = 2 (h - 1).
    np.testing.assert_allclose(chosen_grad.numpy(), 2 * (np_margin() - 1.0), rtol=1e-12)


def test_hinge_gradient_vanishes_past_the_hinge():
    pc = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-5.0], dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(1, dtype=torch.float64)
    loss, _ = hinge_loss(pc, pr, zeros, zeros, beta=BETA)
    loss.sum().backward()
    assert pc.grad.item() == 0.0 and pr.grad.item() == 0.0


def test_cdpo_gradient_reverses_at_large_margin_but_robust_never_does():
    # cDPO's optimum is a finite margin, beta*h = log((1-eps)/eps) = log 4 for eps = 0.2; beyond it
    # cDPO pushes back. rDPO keeps pushing at any margin.
    pc = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(1, dtype=torch.float64)
    cdpo, _ = cdpo_loss(pc, pr, zeros, zeros, beta=BETA, label_smoothing=0.2)
    (cdpo_grad,) = torch.autograd.grad(cdpo.sum(), pc)
    robust, _ = robust_loss(pc, pr, zeros, zeros, beta=BETA, label_smoothing=0.2)
    (robust_grad,) = torch.autograd.grad(robust.sum(), pc)
    assert cdpo_grad.item() > 0
    assert robust_grad.item() < 0


def test_metrics_values():
    loss, metrics = sigmoid_loss(*tensors(), beta=BETA)
    pc, pr, rc, rr = map(np.array, (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED))
    chosen_rewards = BETA * (pc - rc)  # [0.25, 0.25, -0.25]
    rejected_rewards = BETA * (pr - rr)  # [-0.5, 0.25, 0.25]
    assert metrics["rewards/chosen"].item() == pytest.approx(chosen_rewards.mean(), rel=1e-12)
    assert metrics["rewards/rejected"].item() == pytest.approx(rejected_rewards.mean(), rel=1e-12)
    # beta * mean(h) = 0.5 * (1.5 + 0 - 1) / 3.
    assert metrics["rewards/margins"].item() == pytest.approx(0.25 / 3, rel=1e-12)
    # Only the first pair is strictly ranked right; the tie in the second does not count.
    assert metrics["rewards/accuracies"].item() == pytest.approx(1 / 3)
    assert metrics["logps/chosen"].item() == pytest.approx(-16 / 3)
    assert metrics["logps/rejected"].item() == pytest.approx(-16.5 / 3)
    assert all(not value.requires_grad for value in metrics.values())
    assert set(metrics) == {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    }


def test_metrics_are_detached_even_with_grad_inputs():
    _, metrics = sigmoid_loss(*tensors(requires_grad=True), beta=BETA)
    assert all(value.grad_fn is None for value in metrics.values())


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_every_loss_runs_through_the_common_call_in_float32(name):
    # The trainer's call: same positional log-probs, beta, lengths, and the variant's own options.
    options = {
        key: inspect.signature(DPO_LOSSES[name]).parameters[key].default for key in DPO_LOSS_OPTIONS[name]
    }
    loss32, metrics = DPO_LOSSES[name](*tensors(dtype=torch.float32), beta=BETA, **lengths(), **options)
    loss64, _ = DPO_LOSSES[name](*tensors(), beta=BETA, **lengths(), **options)
    assert loss32.dtype == torch.float32 and loss32.shape == (3,)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(torch.as_tensor(value)) for value in metrics.values())


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_options_table_matches_signatures(name):
    shared = {"beta", "chosen_lengths", "rejected_lengths"}
    keyword_only = {
        parameter.name
        for parameter in inspect.signature(DPO_LOSSES[name]).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert keyword_only - shared == set(DPO_LOSS_OPTIONS[name])


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError):
        sigmoid_loss(*tensors(), beta=BETA, label_smoothing=0.1)


@pytest.mark.parametrize("name", sorted(set(DPO_LOSSES) - REFERENCE_FREE_LOSSES))
def test_reference_based_losses_refuse_missing_reference(name):
    pc, pr, _, _ = tensors()
    with pytest.raises(ValueError, match=f"'{name}' needs reference log-probs"):
        DPO_LOSSES[name](pc, pr, None, None, beta=BETA, **lengths())


def test_length_normalised_losses_refuse_missing_lengths():
    with pytest.raises(ValueError, match="needs chosen_lengths"):
        simpo_loss(*tensors(), beta=2.0)
    with pytest.raises(ValueError, match="needs chosen_lengths"):
        ipo_loss(*tensors(), beta=BETA, length_normalize=True)


def test_label_smoothing_ranges_are_checked():
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        robust_loss(*tensors(), beta=BETA, label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        cdpo_loss(*tensors(), beta=BETA, label_smoothing=0.6)

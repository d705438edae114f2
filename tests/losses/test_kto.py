"""KTO loss against its closed form on three examples, the reference point's clamp and detach, the
labels' and weights' roles, and the metrics."""

import math

import numpy as np
import pytest
import torch

from preftune.losses.kto import KTO_LOSSES, apo_zero_unpaired_loss, kto_kl_estimate, kto_loss

# Three examples: implied rewards r = pi - ref = [1.0, -2.0, 0.5]; labels desirable, undesirable,
# desirable. Mismatched pairs: pi - ref = [0.3, -0.1, 0.4], so the KL estimate z0 = 0.6 / 3 = 0.2.
POLICY = [-4.0, -6.5, -3.0]
REFERENCE = [-5.0, -4.5, -3.5]
LABELS = [True, False, True]
POLICY_KL = [-7.0, -5.2, -6.1]
REFERENCE_KL = [-7.3, -5.1, -6.5]
# beta not 0.5 and lambda_D != lambda_U, so swapping labels, weights or the sign of r shows.
BETA, LAMBDA_D, LAMBDA_U = 0.2, 1.5, 0.6


def t(values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def run(labels=LABELS, policy_kl=POLICY_KL, **overrides):
    options = dict(beta=BETA, desirable_weight=LAMBDA_D, undesirable_weight=LAMBDA_U) | overrides
    kl = kto_kl_estimate(t(policy_kl), t(REFERENCE_KL))
    return kto_loss(t(POLICY), t(REFERENCE), torch.tensor(labels), kl, **options)


def test_matches_the_closed_form():
    """By hand, z0 = 0.2:
    ex 0 (desirable):   1.5 * (1 - sigmoid(0.2 * (1.0 - 0.2)))  = 1.5 * (1 - sigmoid(0.16)) = 1.5 * 0.460085 = 0.690128
    ex 1 (undesirable): 0.6 * (1 - sigmoid(0.2 * (0.2 + 2.0)))  = 0.6 * (1 - sigmoid(0.44)) = 0.6 * 0.391741 = 0.235045
    ex 2 (desirable):   1.5 * (1 - sigmoid(0.2 * (0.5 - 0.2)))  = 1.5 * (1 - sigmoid(0.06)) = 1.5 * 0.485004 = 0.727507
    """
    loss, metrics = run()
    r, z0 = np.array(POLICY) - np.array(REFERENCE), 0.2
    expected = [LAMBDA_D * (1 - np_sigmoid(BETA * (r[0] - z0))), LAMBDA_U * (1 - np_sigmoid(BETA * (z0 - r[1]))),
                LAMBDA_D * (1 - np_sigmoid(BETA * (r[2] - z0)))]  # fmt: skip
    np.testing.assert_allclose(expected, [0.690128, 0.235045, 0.727507], atol=1e-6)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    assert float(metrics["kl"]) == pytest.approx(0.2, abs=1e-12)


def test_metrics_are_means_over_each_group():
    _, metrics = run()
    # rewards = beta * r = [0.2, -0.4, 0.1]: chosen mean 0.15, rejected -0.4, margin 0.55.
    assert float(metrics["rewards/chosen"]) == pytest.approx(0.15, abs=1e-12)
    assert float(metrics["rewards/rejected"]) == pytest.approx(-0.4, abs=1e-12)
    assert float(metrics["rewards/margins"]) == pytest.approx(0.55, abs=1e-12)
    assert float(metrics["logps/chosen"]) == pytest.approx(-3.5, abs=1e-12)
    assert float(metrics["logps/rejected"]) == pytest.approx(-6.5, abs=1e-12)
    assert not any(v.requires_grad for v in metrics.values())


def test_a_group_absent_from_the_batch_has_no_metric():
    _, metrics = run(labels=[True, True, True])
    assert "rewards/rejected" not in metrics and "logps/rejected" not in metrics and "rewards/margins" not in metrics
    assert float(metrics["rewards/chosen"]) == pytest.approx(BETA * (1.0 - 2.0 + 0.5) / 3, abs=1e-12)


def test_a_negative_kl_estimate_is_clamped_to_zero():
    """Mismatched pi - ref = [-0.5, -0.1, 0.0]: the mean is -0.2, clamped to z0 = 0:
    1.5 * (1 - sigmoid(0.2)) = 0.675249, 0.6 * (1 - sigmoid(0.4)) = 0.240787, 1.5 * (1 - sigmoid(0.1)) = 0.712531."""
    loss, metrics = run(policy_kl=[-7.8, -5.2, -6.5])
    np.testing.assert_allclose(loss.numpy(), [0.675249, 0.240787, 0.712531], atol=1e-6)
    assert float(metrics["kl"]) == 0.0


def test_the_reference_point_carries_no_gradient():
    policy_kl = t(POLICY_KL, grad=True)
    policy = t(POLICY, grad=True)
    kl = kto_kl_estimate(policy_kl, t(REFERENCE_KL))
    loss, _ = kto_loss(policy, t(REFERENCE), torch.tensor(LABELS), kl, beta=BETA)
    loss.sum().backward()
    assert policy_kl.grad is None
    # d/dr of 1 - sigmoid(beta (r - z0)) is -beta s (1 - s): desirable answers are pushed up,
    # undesirable ones down (d/dr of 1 - sigmoid(beta (z0 - r)) is +beta s (1 - s)).
    s = np_sigmoid(BETA * np.array([0.8, 2.2, 0.3]))  # beta * (r - z0), beta * (z0 - r), beta * (r - z0)
    np.testing.assert_allclose(policy.grad.numpy(), [-BETA * s[0] * (1 - s[0]), BETA * s[1] * (1 - s[1]),
                                                     -BETA * s[2] * (1 - s[2])], rtol=1e-12)  # fmt: skip


def test_swapping_labels_weights_or_policy_and_reference_changes_the_loss():
    loss, _ = run()
    swapped_labels, _ = run(labels=[not label for label in LABELS])
    swapped_weights, _ = run(desirable_weight=LAMBDA_U, undesirable_weight=LAMBDA_D)
    kl = kto_kl_estimate(t(REFERENCE_KL), t(POLICY_KL))  # -0.2 -> 0 after the clamp
    swapped_models, _ = kto_loss(t(REFERENCE), t(POLICY), torch.tensor(LABELS), kl, beta=BETA,
                                 desirable_weight=LAMBDA_D, undesirable_weight=LAMBDA_U)  # fmt: skip
    for other in (swapped_labels, swapped_weights, swapped_models):
        assert float((other - loss).abs().max()) > 0.05


def test_at_the_reference_the_loss_is_half_of_each_weight():
    # pi == ref on every answer and every mismatched pair: r = z0 = 0, sigmoid(0) = 1/2.
    zeros = t([-3.0, -2.0, -1.0])
    loss, metrics = kto_loss(zeros, zeros.clone(), torch.tensor(LABELS), kto_kl_estimate(zeros, zeros), beta=BETA,
                             desirable_weight=LAMBDA_D, undesirable_weight=LAMBDA_U)  # fmt: skip
    np.testing.assert_allclose(loss.numpy(), [LAMBDA_D / 2, LAMBDA_U / 2, LAMBDA_D / 2])
    assert float(metrics["rewards/margins"]) == 0.0


def test_large_rewards_do_not_overflow():
    loss, _ = kto_loss(t([1e4, -1e4]), t([0.0, 0.0]), torch.tensor([True, False]), 0.0, beta=BETA)
    assert torch.isfinite(loss).all() and float(loss.max()) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(float(kto_loss(t([-1e4]), t([0.0]), torch.tensor([True]), 0.0, beta=BETA)[0]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kto_loss(t([1.0, 2.0]), t([1.0]), torch.tensor([True, False]), 0.0, beta=0.1), "shape"),
        (lambda: kto_loss(t([1.0, 2.0]), t([1.0, 2.0]), torch.tensor([1, 0]), 0.0, beta=0.1), "bool"),
        (lambda: kto_kl_estimate(t([]), t([])), "M >= 1"),
        (lambda: kto_kl_estimate(t([1.0, 2.0]), t([1.0])), "shape"),
    ],
)
def test_bad_shapes_are_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_apo_zero_unpaired_matches_the_closed_form_and_ignores_the_kl_estimate():
    """r = [1.0, -2.0, 0.5], beta 0.2, no reference point:
    1.5 * (1 - sigmoid(0.2)) = 0.675249, 0.6 * sigmoid(-0.4) = 0.240787, 1.5 * (1 - sigmoid(0.1)) = 0.712531
    (KTO with z0 = 0, which is why KTO's z0 = 0.2 above gives other numbers)."""
    options = dict(beta=BETA, desirable_weight=LAMBDA_D, undesirable_weight=LAMBDA_U)
    loss, metrics = apo_zero_unpaired_loss(t(POLICY), t(REFERENCE), torch.tensor(LABELS), 0.2, **options)
    np.testing.assert_allclose(loss.numpy(), [0.675249, 0.240787, 0.712531], atol=1e-6)
    assert float(metrics["kl"]) == 0.0 and float(metrics["rewards/margins"]) == pytest.approx(0.55, abs=1e-12)
    kto, _ = run()
    assert float((kto - loss).abs().max()) > 0.01
    import dataclasses

    from preftune.config import KTOConfig

    choices = next(f for f in dataclasses.fields(KTOConfig) if f.name == "loss").metadata["check"].choices
    assert set(choices) == set(KTO_LOSSES)  # the flag offers exactly what the code implements

"""Module 3, DPO on the labelled pairs: gradient steps on a policy over the six answers.

The policy is a softmax over six logits, starting at pi_ref. Each labelled pair (chosen, rejected)
is a training example for `losses.dpo.sigmoid_loss`, the loss the DPO trainer calls, with the
policy's and the reference's log-probs of the two answers. Pairs are weighted by their votes
(plus the same prior pseudo-votes module 1 uses), so this is DPO on exactly the data module 1
fitted its Bradley–Terry rewards to.

Why it lands on module 2's pi*: DPO's implicit reward beta * log(pi / pi_ref) enters its loss
exactly where the reward enters the Bradley–Terry loss. With one free logit per answer the DPO
minimiser therefore has implicit rewards equal to the fitted BT rewards up to a constant, i.e.
pi = pi_ref * exp(r / beta) / Z = pi* (Rafailov et al. 2023, section 4 and appendix A).

The per-pair gradient weight is sigma(-beta * h), h = (log pi_c - log pi_r) - (log ref_c - log ref_r):
the derivative of the loss with respect to the chosen log-prob is -beta * sigma(-beta * h) (eq. 7's
gradient in the paper). It is read back from autograd through the library loss, not recomputed.
Pairs the policy already ranks confidently get weight near 0; mis-ranked pairs get weight near 1.
"""

from __future__ import annotations

import torch

from ..losses.dpo import sigmoid_loss
from .optimum import optimal_policy, reference_logprobs, total_variation
from .preferences import DTYPE, ORDERED_PAIRS, pair_indices

# Play stops once the gradient, in implicit-reward units (grad / beta), is below this: the policy
# no longer moves at the 4 decimals shown.
CONVERGED_GRAD_NORM = 1e-9


def dpo_loss(
    logits: torch.Tensor, weights: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(vote-weighted mean loss, per-pair loss [30], metrics) of the policy softmax(logits)."""
    chosen, rejected = pair_indices()
    policy = torch.log_softmax(logits, dim=-1)
    reference = reference_logprobs()
    per_pair, metrics = sigmoid_loss(
        policy[chosen], policy[rejected], reference[chosen], reference[rejected], beta=beta
    )
    return (per_pair * weights).sum() / weights.sum(), per_pair, metrics


def gradient_weights(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """sigma(-beta * h) [30] per ordered pair, as -d loss / d log pi_c divided by beta (autograd)."""
    chosen, rejected = pair_indices()
    policy = torch.log_softmax(logits.detach(), dim=-1)
    reference = reference_logprobs()
    chosen_logps = policy[chosen].clone().requires_grad_(True)
    per_pair, _ = sigmoid_loss(
        chosen_logps, policy[rejected], reference[chosen], reference[rejected], beta=beta
    )
    (grad,) = torch.autograd.grad(per_pair.sum(), chosen_logps)
    return -grad / beta


def dpo_steps(
    logits: torch.Tensor, weights: torch.Tensor, beta: float, step_size: float, steps: int
) -> tuple[torch.Tensor, float]:
    """`steps` of gradient descent on the DPO loss; returns (logits, last gradient norm).

    The learning rate is step_size / beta^2. The loss is a function of beta * logits, so its
    curvature in the logits grows as beta^2; scaling the step by 1 / beta^2 makes one step size
    stable and equally fast at every beta (plain SGD in the units of the implicit reward).
    """
    params = logits.detach().to(DTYPE).clone().requires_grad_(True)
    optimizer = torch.optim.SGD([params], lr=step_size / beta**2)
    grad_norm = float("nan")
    for _ in range(steps):
        loss, _, _ = dpo_loss(params, weights, beta)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(params.grad.norm())
        optimizer.step()
    return params.detach(), grad_norm


def dpo_state(
    rewards: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
    logits: torch.Tensor,
    step_size: float,
    step: int,
    steps: int,
) -> dict:
    """Module 3 after `steps` more DPO steps: policy, loss, implicit rewards, pair weights, pi*.

    `rewards` are module 1's Bradley–Terry rewards for the same `weights`: pi* is built from them.
    """
    logits, grad_norm = dpo_steps(logits, weights, beta, step_size, steps)
    logits = logits - logits.mean()
    loss, _, _ = dpo_loss(logits, weights, beta)
    if steps == 0:  # the gradient norm of where we stand, for the "converged" flag
        probe = logits.clone().requires_grad_(True)
        dpo_loss(probe, weights, beta)[0].backward()
        grad_norm = float(probe.grad.norm())
    probs = torch.softmax(logits, dim=-1)
    implicit = beta * (torch.log_softmax(logits, dim=-1) - reference_logprobs())
    target = optimal_policy(rewards, beta)
    chosen, rejected = pair_indices()
    pair_weights = gradient_weights(logits, beta)
    pairs = [
        {"chosen": c, "rejected": r, "votes": float(w), "weight": float(g)}
        for (c, r), w, g in zip(ORDERED_PAIRS, weights.tolist(), pair_weights.tolist(), strict=True)
    ]
    return {
        "beta": beta,
        "step": step + steps,
        "learning_rate": step_size / beta**2,
        "logits": logits.tolist(),
        "policy": probs.tolist(),
        "reference": reference_logprobs().exp().tolist(),
        "optimal": target.tolist(),
        "implicit_rewards": implicit.tolist(),
        # Rewards are defined up to a constant: centre both to compare them.
        "implicit_rewards_centred": (implicit - implicit.mean()).tolist(),
        "bt_rewards": rewards.tolist(),
        "loss": float(loss),
        # The vote-weighted mean implicit-reward margin beta * h (the trainer's "rewards/margins").
        "margin": float((weights * (implicit[chosen] - implicit[rejected])).sum() / weights.sum()),
        "distance": total_variation(probs, target),
        "grad_norm": grad_norm,
        "converged": grad_norm / beta < CONVERGED_GRAD_NORM,
        "pairs": pairs,
    }

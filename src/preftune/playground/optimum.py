"""Module 2, the KL-regularised optimum, and PPO stepping towards it on the six answers.

RLHF maximises J(pi) = E_pi[r] - beta * KL(pi || pi_ref). Over a finite set of answers the
maximiser has a closed form (Ziegler et al. 2019; Rafailov et al. 2023, "Direct Preference
Optimization", eq. 4):

    pi*(y) = pi_ref(y) * exp(r(y) / beta) / Z(beta)

Large beta keeps pi* at pi_ref; small beta piles it onto the highest-reward answer.

`ppo_iteration` is one PPO iteration on this six-armed bandit, built from the same functions the
PPO trainer calls: a rollout of answers drawn from the current policy, per-answer rewards
r(y) - beta * (log pi(y) - log pi_ref(y)) from `losses.kl.kl_penalized_rewards` (each answer is a
one-token "sequence"), a batch-mean baseline, and epochs of `losses.ppo.clipped_policy_loss`. Its
fixed point is pi*: the penalised reward is the same for every answer exactly when
log pi = log pi_ref + r / beta + const.
"""

from __future__ import annotations

import torch

from ..losses.advantages import masked_mean
from ..losses.kl import kl_k1, kl_penalized_rewards
from ..losses.ppo import clipped_policy_loss
from .answers import ANSWERS
from .preferences import DTYPE

ROLLOUT_SIZE = 1024  # answers sampled per PPO iteration
PPO_EPOCHS = 4
CLIP_RANGE = 0.2


def reference_logprobs() -> torch.Tensor:
    """log pi_ref [6]."""
    return torch.tensor([a.reference_prob for a in ANSWERS], dtype=DTYPE).log()


def optimal_policy(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """pi* [6] ∝ pi_ref * exp(rewards / beta), normalised in log space (no overflow at small beta)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return torch.softmax(reference_logprobs() + rewards.to(DTYPE) / beta, dim=-1)


def exact_kl(probs: torch.Tensor) -> float:
    """KL(pi || pi_ref) = sum_y pi(y) * k1(y): the k1 estimator's expectation, taken exactly.

    Answers with pi(y) = 0 contribute 0 (the limit of p log p), so they are left out.
    """
    keep = probs > 0
    per_answer = kl_k1(probs[keep].log(), reference_logprobs()[keep])
    return float((probs[keep] * per_answer).sum())


def policy_numbers(probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> dict[str, float]:
    """Expected reward, KL from pi_ref, and the RLHF objective J = E[r] - beta * KL."""
    expected_reward = float((probs * rewards).sum())
    kl = exact_kl(probs)
    return {"expected_reward": expected_reward, "kl": kl, "objective": expected_reward - beta * kl}


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Half the L1 distance: the largest difference in probability the two give any set of answers."""
    return float(0.5 * (p - q).abs().sum())


def rollout(probs: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """`size` answer indices drawn from `probs` by systematic sampling: one uniform offset, then
    evenly spaced points through the CDF. Unbiased like independent draws, but each answer appears
    within one of its expected count, so the animation is not dominated by sampling noise."""
    offset = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    points = (offset + torch.arange(size, dtype=DTYPE)) / size
    cdf = torch.cumsum(probs, dim=0)
    return torch.searchsorted(cdf, points).clamp_max(len(probs) - 1)


def ppo_iteration(
    logits: torch.Tensor, rewards: torch.Tensor, beta: float, lr: float, iteration: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """One PPO iteration from policy logits [6]; returns (new logits [6], metrics of section 4)."""
    old_logprobs_all = torch.log_softmax(logits.to(DTYPE), dim=-1)
    answers = rollout(old_logprobs_all.exp(), ROLLOUT_SIZE, seed=iteration)
    # Each sampled answer is a one-token response: tensors are [N, 1] with an all-true mask.
    mask = torch.ones(ROLLOUT_SIZE, 1, dtype=torch.bool)
    old_logprobs = old_logprobs_all[answers].unsqueeze(-1)
    ref_logprobs = reference_logprobs()[answers].unsqueeze(-1)
    scores = rewards.to(DTYPE)[answers]
    penalised, objective = kl_penalized_rewards(
        scores, old_logprobs, ref_logprobs, mask, kl_coef=beta, estimator="k1"
    )
    # The batch mean is the value baseline: exact for a one-step episode, up to sampling.
    advantages = penalised - masked_mean(penalised, mask)

    params = logits.detach().to(DTYPE).clone().requires_grad_(True)
    optimizer = torch.optim.SGD([params], lr=lr)
    for _ in range(PPO_EPOCHS):
        new_logprobs = torch.log_softmax(params, dim=-1)[answers].unsqueeze(-1)
        loss, policy_metrics = clipped_policy_loss(new_logprobs, old_logprobs, advantages, mask, CLIP_RANGE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    metrics = {name: float(value) for name, value in (objective | policy_metrics).items()}
    return params.detach(), metrics


def optimum_state(
    rewards: torch.Tensor, beta: float, logits: torch.Tensor, lr: float, iteration: int, steps: int
) -> dict:
    """Module 2: pi* for this beta, and the PPO policy after `steps` more iterations."""
    ppo_metrics: dict[str, float] = {}
    for _ in range(steps):
        iteration += 1
        logits, ppo_metrics = ppo_iteration(logits, rewards, beta, lr, iteration)
    logits = logits - logits.mean()  # softmax ignores the offset; keep the numbers readable
    probs = torch.softmax(logits, dim=-1)
    target = optimal_policy(rewards, beta)
    return {
        "beta": beta,
        "iteration": iteration,
        "logits": logits.tolist(),
        "rewards": rewards.tolist(),
        "reference": reference_logprobs().exp().tolist(),
        "optimal": target.tolist(),
        "policy": probs.tolist(),
        "optimal_numbers": policy_numbers(target, rewards, beta),
        "policy_numbers": policy_numbers(probs, rewards, beta),
        "distance": total_variation(probs, target),
        "ppo": ppo_metrics,
    }

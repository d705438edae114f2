"""Per-token KL estimators, KL-penalised rewards and KL-coefficient controllers for RLHF.

The KL estimators follow Schulman 2020, "Approximating KL Divergence"
(http://joschu.net/blog/kl-approx.html). Tokens are sampled from the policy p, and we want
KL(p || q) with q the frozen reference. With log r = log q(x) - log p(x) at a sampled token x:

    k1 = -log r = log p - log q           unbiased, but single samples can be negative
    k2 = 0.5 * (log r)^2                  biased, low variance, always >= 0
    k3 = (r - 1) - log r                  unbiased (E_p[r - 1] = 0) and always >= 0

Each estimator maps [B, T] log-probs of the sampled tokens to a [B, T] per-token estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def kl_k1(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log p(x) - log q(x), x ~ p. Unbiased for KL(p || q); per-sample values may be < 0."""
    # The plain log-ratio; its expectation under p is the KL by definition.
    return policy_logprobs - ref_logprobs


def kl_k2(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log p(x) - log q(x))^2, x ~ p. Biased (exact only to second order), >= 0."""
    # Half the squared log-ratio: an f-divergence that matches KL to second order as q -> p.
    return 0.5 * (policy_logprobs - ref_logprobs) ** 2


def kl_k3(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = q(x)/p(x), x ~ p. Unbiased for KL(p || q) and >= 0.

    k1 plus the control variate (r - 1), whose expectation under p is 0; >= 0 because log r <= r - 1.
    """
    # log r = log q - log p, the log of the reference-to-policy ratio.
    log_ratio = ref_logprobs - policy_logprobs
    # expm1 keeps r - 1 accurate when r is near 1 (the usual case, p close to q).
    estimate = torch.expm1(log_ratio) - log_ratio
    # Exact arithmetic gives >= 0; the clamp removes rounding's -1e-17, so the invariant holds in floats.
    return estimate.clamp_min(0.0)


# The estimators by name, as `--kl-estimator` spells them.
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def last_unmasked_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last true position of each row of a [B, T] mask, shape [B] (long).

    Raises ValueError if a row has no true position: a response without tokens cannot carry a score.
    """
    # Boolean mask; collators may hand over float or long masks.
    keep = mask.bool()
    if not bool(keep.any(dim=-1).all()):
        raise ValueError("kl_penalized_rewards: a row of the response mask is empty (a zero-length response)")
    # Positions 0..T-1 where the mask is set and -1 elsewhere; the row maximum is the last position.
    positions = torch.arange(keep.shape[-1], device=keep.device).expand_as(keep)
    return torch.where(keep, positions, torch.full_like(positions, -1)).max(dim=-1).values


def kl_penalized_rewards(
    scores: torch.Tensor,
    policy_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token RLHF rewards: a KL penalty at every token, the sequence score at the last one.

    Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences", section 2.2) and
    InstructGPT (Ouyang et al. 2022, eq. 2): R(x, y) = r(x, y) - kl_coef * KL(pi(.|x) || ref(.|x)),
    with the KL estimated per sampled token, so

        rewards[b, t] = -kl_coef * kl[b, t]                       for each response token t
        rewards[b, last_b] += scores[b]                           last_b = last unmasked token

    Shapes: `scores` [B]; `policy_logprobs`, `ref_logprobs`, `mask` [B, T] (log-probs of the sampled
    tokens under the rollout policy and the reference). Returns `(rewards [B, T], metrics)`, rewards 0
    on padding. Call under `torch.no_grad()`: these rewards are targets, not part of the graph.

    Metrics (DESIGN.md section 4): "objective/kl" (mean over sequences of the per-sequence KL sum),
    "objective/non_score_reward" (mean per-sequence sum of -kl_coef * kl), "objective/scores"
    (mean score), "objective/rlhf_reward" (scores + non-score reward, mean over sequences).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    if scores.dim() != 1 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"scores must have shape [B] = [{mask.shape[0]}], got {tuple(scores.shape)}")
    # Boolean mask for `where`.
    keep = mask.bool()
    # Per-token KL estimate, zeroed on padding (whose log-probs may be garbage).
    kl = torch.where(keep, KL_ESTIMATORS[estimator](policy_logprobs, ref_logprobs), 0.0)
    # The penalty part of the reward at each token.
    non_score_reward = -kl_coef * kl
    # Where each response ends; the scalar score is the reward of that final action.
    last_index = last_unmasked_index(keep)
    # Add the score at (b, last_b); scatter_add keeps the dtype and device of the rewards.
    rewards = non_score_reward.scatter_add(
        -1, last_index.unsqueeze(-1), scores.to(non_score_reward.dtype).unsqueeze(-1)
    )
    # Per-sequence sums: the quantities whose means the field logs.
    kl_per_sequence = kl.sum(dim=-1)
    non_score_per_sequence = non_score_reward.sum(dim=-1)
    metrics = {
        "objective/kl": kl_per_sequence.mean().detach(),
        "objective/non_score_reward": non_score_per_sequence.mean().detach(),
        "objective/scores": scores.mean().detach(),
        "objective/rlhf_reward": (scores + non_score_per_sequence).mean().detach(),
    }
    return rewards, metrics


class FixedKLController:
    """A constant KL coefficient (`--kl-coef C`). `update` is a no-op, kept for a common interface."""

    def __init__(self, kl_coef: float):
        # The coefficient beta of R = r - beta * KL; 0 turns the penalty off.
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        # Nothing adapts: the coefficient stays what the user set.
        return None


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019, section 2.2 (`--target-kl K`).

    A proportional controller that steers the measured KL towards `target`:

        e     = clip(KL / target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n_steps / horizon)

    The paper writes beta_{t+1} = beta_t (1 + K_beta e_t) with K_beta = 0.1; the reference code
    (openai/lm-human-preferences) sets K_beta = n_steps / horizon, so the rate does not depend on
    batch size. `n_steps` is the number of samples (episodes) the KL was measured on.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"KL controller horizon must be > 0, got {horizon}")
        # Current coefficient beta; starts where the user put it.
        self.value = float(init_kl_coef)
        # Target KL in nats per sequence (the same units as "objective/kl").
        self.target = float(target)
        # Samples over which a full 20% correction would accumulate.
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        # Relative error of the measured KL; the clip bounds each step's correction to +-20%.
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        # Multiplicative update: KL above target raises beta, below target lowers it.
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n, in nats, for keeping the best of n samples.

    Stiennon et al. 2020 ("Learning to summarize from human feedback", appendix) and Gao et al. 2022
    ("Scaling Laws for Reward Model Overoptimization", section 2): with continuous, distinct scores
    the kept sample's score has CDF F^n, density n F^(n-1) relative to the base, so
        KL = E[log(n F^(n-1))] = log n + (n - 1) * integral_0^1 n u^(n-1) log u du = log n - (n-1)/n.
    With ties (finitely many outcomes) the true KL is lower: the formula is an upper bound
    (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy").
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    # log n: the density ratio's ceiling; (n-1)/n: the mean of -(n-1) log F under the kept sample.
    return math.log(n) - (n - 1) / n

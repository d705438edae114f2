"""PPO's clipped surrogate losses for the policy and the value function, per token with a mask.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms". Each action is one generated token;
all tensors are [B, T] over the response, with a mask true on response tokens. Both losses are the
masked mean over every response token of the minibatch (a scalar), as in TRL's and CleanRL's PPO:
the objective is an expectation over actions, and a token is an action.
"""

from __future__ import annotations

import torch

from preftune.losses.advantages import masked_mean


def clipped_policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-Clip policy loss, the negative of L^CLIP in eq. 7 of Schulman et al. 2017.

        ratio = exp(new_logprobs - old_logprobs)
        loss  = masked_mean( max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)) )

    Taking the max of the negated terms is the min of eq. 7: the pessimistic bound. Clipping is in
    effect (gradient 0) only when the ratio has left [1 - c, 1 + c] in the direction the advantage
    pushes it: above 1 + c for A > 0, below 1 - c for A < 0.

    Shapes: all inputs [B, T]; `old_logprobs` and `advantages` are rollout-time constants (detached
    here so a caller's slip cannot send gradient through them). Returns `(loss, metrics)` with `loss`
    a scalar.

    Metrics: "loss/policy_avg"; "policy/approxkl_avg", the k3 estimator mean((ratio - 1) - log ratio)
    of KL(pi_old || pi_new) on the rollout tokens (unbiased and >= 0; Schulman 2020, "Approximating KL
    Divergence"; CleanRL's `approx_kl`); "policy/clipfrac_avg", the fraction of tokens where the
    clipped term is the larger loss (the gradient is cut there); "val/ratio", the mean ratio.
    """
    # Old log-probs and advantages come from the rollout; they are constants of this objective.
    old_logprobs = old_logprobs.detach()
    advantages = advantages.detach()
    # log(pi_new / pi_old) per token; its exp is the importance ratio r_t(theta) of eq. 6.
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    # The unclipped surrogate -A * r, negated because optimisers minimise.
    unclipped_loss = -advantages * ratio
    # The clipped surrogate -A * clip(r, 1-c, 1+c).
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    # Elementwise max of the negatives == min of eq. 7's terms.
    per_token_loss = torch.maximum(unclipped_loss, clipped_loss)
    # Mean over the response tokens of the minibatch.
    loss = masked_mean(per_token_loss, mask)
    with torch.no_grad():
        # k3 KL of old from new, as sampled under the old policy: r - 1 - log r with r = new/old.
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        # Strictly larger: on ties the two terms have the same value and the unclipped gradient.
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).to(per_token_loss.dtype), mask)
        mean_ratio = masked_mean(ratio, mask)
    metrics = {
        "loss/policy_avg": loss.detach(),
        "policy/approxkl_avg": approx_kl,
        "policy/clipfrac_avg": clip_fraction,
        "val/ratio": mean_ratio,
    }
    return loss, metrics


def clipped_value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value-function loss, as in the PPO reference code (OpenAI baselines `ppo2`) and the
    RLHF recipes built on it (Ziegler et al. 2019; InstructGPT):

        v_clipped = old_values + clip(new_values - old_values, -c, c)
        loss      = 0.5 * masked_mean( max((new_values - R)^2, (v_clipped - R)^2) )

    The value may move at most c from its rollout-time estimate before the gradient is cut, the value
    analogue of the ratio clip. The 0.5 makes the gradient (v - R) as for a plain squared error.

    Shapes: all inputs [B, T]; `old_values` and `returns` are detached (rollout-time targets).
    Returns `(loss, metrics)`, loss a scalar. Metrics: "loss/value_avg" and "val/clipfrac_avg", the
    fraction of tokens where the clipped error is the larger one.
    """
    # Targets and the anchor are rollout-time constants.
    old_values = old_values.detach()
    returns = returns.detach()
    # Squared error of the fresh prediction.
    unclipped_error = (new_values - returns) ** 2
    # The prediction held within c of the rollout estimate.
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    # Squared error of the clipped prediction.
    clipped_error = (clipped_values - returns) ** 2
    # Pessimistic (larger) error per token, then half the masked mean.
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        # Strictly larger: where the clipped error wins, the gradient to new_values is 0.
        clip_fraction = masked_mean((clipped_error > unclipped_error).to(unclipped_error.dtype), mask)
    metrics = {
        "loss/value_avg": loss.detach(),
        "val/clipfrac_avg": clip_fraction,
    }
    return loss, metrics

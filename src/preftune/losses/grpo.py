"""The group-baseline policy loss (GRPO, Dr. GRPO, RLOO, REINFORCE++), per token with a mask.

One clipped surrogate (PPO's, Schulman et al. 2017, eq. 7) serves all four; they differ in the
advantage (`losses/advantages.py`), in where the KL to the reference goes, and in how per-token
losses are averaged:

- "sequence": mean over each completion's tokens, then over completions. GRPO as written
  (Shao et al. 2024, "DeepSeekMath", eq. 3, the 1/|o_i| factor); TRL's `loss_type="grpo"`.
- "token": one mean over every completion token of the batch (DAPO, Yu et al. 2025, eq. 8;
  TRL's "bnpo"); the estimator PPO uses in `losses/ppo.py`.
- "constant": the sum over every token divided by B * max_completion_length (Dr. GRPO, Liu et al.
  2025, section 3.1): no 1/|o_i|, so long wrong answers are not penalised less per token than
  short ones (the length bias the paper names). TRL's "dr_grpo".

The KL to the reference is either subtracted from the reward before the advantage is computed
(`losses.kl.kl_penalized_rewards`: RLOO and REINFORCE++ as their papers have it) or added to the
loss per token with weight `kl_coef` (GRPO, eq. 3 and 4, with the k3 estimator).

Tensors are [B, T] over the completion with a mask true on completion tokens; advantages are [B]
(one per completion, broadcast over its tokens) or [B, T].
"""

from __future__ import annotations

import torch

from preftune.losses.advantages import masked_mean
from preftune.losses.kl import KL_ESTIMATORS

LOSS_NORMALIZATIONS = ("sequence", "token", "constant")


def normalize_token_losses(
    per_token_loss: torch.Tensor, mask: torch.Tensor, normalization: str, max_completion_length: int | None = None
) -> torch.Tensor:
    """Reduce [B, T] per-token losses to a scalar, one of LOSS_NORMALIZATIONS (module note).

        sequence:  (1/B) sum_i (1/|o_i|) sum_t l_it
        token:     sum_i sum_t l_it / sum_i |o_i|
        constant:  sum_i sum_t l_it / (B * L),  L = max_completion_length
    """
    keep = mask.bool()
    # `where`, not a product: padding may hold NaN or inf (see losses/advantages.py).
    zeroed = torch.where(keep, per_token_loss, torch.zeros_like(per_token_loss))
    if normalization == "sequence":
        # Mean per completion, then over completions; a row with no tokens would be 0/0, refused upstream.
        return (zeroed.sum(-1) / keep.sum(-1).to(zeroed.dtype)).mean()
    if normalization == "token":
        return masked_mean(per_token_loss, keep)
    if normalization == "constant":
        if not max_completion_length or max_completion_length < 1:
            raise ValueError("normalize_token_losses: 'constant' needs max_completion_length >= 1")
        # A constant divisor: every token's gradient has the same weight whatever its answer's length.
        return zeroed.sum() / (per_token_loss.shape[0] * max_completion_length)
    raise ValueError(f"unknown loss normalization {normalization!r}; choose one of {', '.join(LOSS_NORMALIZATIONS)}")


def group_policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float = 0.2,
    normalization: str = "sequence",
    max_completion_length: int | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate with an optional per-token KL term (GRPO, Shao et al. 2024, eq. 3):

        ratio_t = exp(new_t - old_t)
        l_t     = -min(ratio_t * A, clip(ratio_t, 1 - c, 1 + c) * A)  +  kl_coef * KL_t
        loss    = normalize_token_losses(l, mask, normalization)

    KL_t is `kl_estimator` of KL(pi || ref) at the sampled token; GRPO's eq. 4 is k3,
    pi_ref/pi - log(pi_ref/pi) - 1. It is differentiated through `new_logprobs` (the gradient of k3
    is (1 - pi_ref/pi) grad log pi). Pass `ref_logprobs=None` or `kl_coef=0` when the KL is in the
    reward instead.

    Shapes: `new_logprobs`, `old_logprobs`, `mask` [B, T]; `advantages` [B] or [B, T];
    `ref_logprobs` [B, T] or None. `old_logprobs`, `advantages`, `ref_logprobs` are detached.
    Returns `(loss, metrics)`, loss a scalar.

    Metrics (TRL's GRPOTrainer names; token means over the whole batch, whatever `normalization`):
    "kl" (mean KL_t, only with a reference), "clip_ratio/low_mean" (ratio < 1 - c with A < 0),
    "clip_ratio/high_mean" (ratio > 1 + c with A > 0), "clip_ratio/region_mean" (either: tokens whose
    gradient the clip cut), "policy_loss" (the surrogate alone, normalised the same way).
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    old_logprobs = old_logprobs.detach()
    advantages = advantages.detach()
    if advantages.dim() == 1:
        # One advantage per completion, the same for each of its tokens (outcome supervision).
        advantages = advantages.unsqueeze(-1)
    # Importance ratio pi_theta / pi_theta_old of each sampled token (1 on the first epoch).
    ratio = torch.exp(new_logprobs - old_logprobs)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    # The pessimistic bound of PPO's eq. 7, negated to a loss.
    surrogate = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    per_token_loss = surrogate
    kl = None
    if ref_logprobs is not None and kl_coef:
        # Differentiated through the policy's log-probs; the reference is a constant.
        kl = KL_ESTIMATORS[kl_estimator](new_logprobs, ref_logprobs.detach())
        per_token_loss = surrogate + kl_coef * kl
    loss = normalize_token_losses(per_token_loss, mask, normalization, max_completion_length)
    with torch.no_grad():
        # Where the clip is active and cuts the gradient (TRL's definitions, section "clip_ratio").
        low = ((ratio < 1.0 - clip_range) & (advantages < 0)).to(ratio.dtype)
        high = ((ratio > 1.0 + clip_range) & (advantages > 0)).to(ratio.dtype)
        metrics = {
            "policy_loss": normalize_token_losses(surrogate, mask, normalization, max_completion_length),
            "clip_ratio/low_mean": masked_mean(low, mask),
            "clip_ratio/high_mean": masked_mean(high, mask),
            "clip_ratio/region_mean": masked_mean(torch.maximum(low, high), mask),
        }
        if kl is not None:
            metrics["kl"] = masked_mean(kl, mask)
    return loss, metrics


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution, H_t = -sum_v p_v log p_v, in nats.

    Shapes: logits [B, T, V] -> [B, T]. Logged as "entropy" (masked token mean), as TRL does.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    # entr(p) = -p log p with entr(0) = 0: a masked (-inf) logit gives p = 0, and 0 * log 0 must not be NaN.
    return torch.special.entr(probs).sum(-1)

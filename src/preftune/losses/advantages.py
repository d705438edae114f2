"""Masked statistics and generalised advantage estimation for PPO.

Every tensor here is per token, shape [B, T], with a mask of the same shape that is true (or 1) on
response tokens and false on padding. Padding may hold anything, NaN included: every function reads
values only where the mask is set, so garbage there never leaks into a result.
"""

from __future__ import annotations

import torch

# The variance floor in whitening: a batch whose advantages are all equal has variance 0, and
# dividing by sqrt(0) would turn the whole update into NaN.
WHITEN_EPS = 1e-8


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is set.

    Shapes: `values` and `mask` broadcast to each other, typically [B, T]. With `dim=None` the result
    is a scalar (the mean over every unmasked token of the batch, so long responses weigh more, as
    in the PPO implementations of TRL and CleanRL); with `dim` it reduces that axis only.
    An all-false mask gives NaN (0/0) on purpose: a mean of nothing is a bug upstream, and the
    trainers' NaN guard names it instead of a silent 0.
    """
    # Boolean view so float masks (0./1.) and integer masks (0/1) behave the same way.
    keep = mask.bool()
    # `where`, not `values * mask`: NaN * 0 is NaN, and padding may hold NaN or -inf log-probs.
    zeroed = torch.where(keep, values, torch.zeros_like(values))
    # Count in the values' dtype so the division stays in float32/float64.
    count = keep.to(values.dtype)
    if dim is None:
        return zeroed.sum() / count.sum()
    return zeroed.sum(dim) / count.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` over the positions where `mask` is set (a scalar over the whole batch).

    `unbiased=True` applies Bessel's correction n/(n-1), n the number of unmasked positions, matching
    `torch.var` and numpy's `ddof=1`; a single unmasked position then gives NaN rather than 0.
    """
    # Centre on the masked mean, not the plain mean, or padding would shift the centre.
    centred = values - masked_mean(values, mask)
    # Population variance over the unmasked positions.
    variance = masked_mean(centred**2, mask)
    if unbiased:
        # Number of unmasked positions, as a float for the correction factor.
        count = mask.bool().sum().to(values.dtype)
        # Bessel's correction; with count == 1 this divides by zero, which is the honest answer.
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise `values` to mean 0 and (unbiased) variance 1 over the mask.

    Shapes: [B, T] in, [B, T] out; positions outside the mask come back as 0.
    `shift_mean=False` only rescales (keeps the mean), which is what one wants for rewards whose sign
    carries meaning; advantages are whitened fully (PPO's usual advantage normalisation, as in the
    OpenAI baselines and the InstructGPT/Ziegler et al. 2019 code).
    """
    # Statistics over the unmasked positions only.
    mean = masked_mean(values, mask)
    variance = masked_var(values, mask)
    # rsqrt of (var + eps): see WHITEN_EPS for why the floor is there.
    whitened = (values - mean) * torch.rsqrt(variance + WHITEN_EPS)
    if not shift_mean:
        # Put the mean back: scale-only normalisation.
        whitened = whitened + mean
    # Zero the padding so that nothing downstream sees whitened garbage.
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", section 3, eq. 16), per token of a response.

    Shapes: `rewards`, `values`, `mask` are [B, T]; returns `(advantages, returns)`, both [B, T], zero
    outside the mask. The response is right-padded: the mask is a run of ones followed by zeros.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t          (the value-function target, the "lambda-return")

    The episode ends at the last unmasked token, so V and A beyond it are taken as 0: nothing is
    bootstrapped past the response's end (the EOS is terminal).
    Computed under the caller's grad mode; PPO calls it under `torch.no_grad()` with old values.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must have the same [B, T] shape"
        )
    # Boolean mask once; float masks are common from collators.
    keep = mask.bool()
    # Read rewards and values only inside the mask (padding may be garbage, see the module note).
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))
    values = torch.where(keep, values, torch.zeros_like(values))
    # Sequence length; the recursion runs backwards over it.
    num_steps = rewards.shape[-1]
    # A_{T} = 0 and V_{T} = 0: the state after the last position is terminal.
    next_advantage = torch.zeros_like(rewards[..., 0])
    next_value = torch.zeros_like(values[..., 0])
    # Collected right-to-left, reversed at the end (a Python list keeps autograd-free code simple).
    advantages_reversed = []
    for t in reversed(range(num_steps)):
        # TD residual delta_t of the GAE paper (section 3); V_{t+1} is 0 past the last unmasked token.
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        # Eq. 16 written recursively: A_t = delta_t + gamma*lam*A_{t+1}.
        advantage = delta + gamma * lam * next_advantage
        # Padding contributes nothing and passes nothing backwards into the response.
        advantage = torch.where(keep[..., t], advantage, torch.zeros_like(advantage))
        advantages_reversed.append(advantage)
        # What position t-1 sees as "next": this position's advantage and value (0 if padding).
        next_advantage = advantage
        next_value = values[..., t]
    # Back to left-to-right order along T.
    advantages = torch.stack(advantages_reversed[::-1], dim=-1)
    # Lambda-returns, the value head's regression target; zero on padding like the advantages.
    returns = torch.where(keep, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


# ---- group baselines for online RL without a value model (GRPO, Dr. GRPO, RLOO, REINFORCE++) -------
#
# Each prompt is sampled G times ("a group"); rows are laid out group by group, so `scores` of shape
# [B] with B = P * G reshapes to [P, G]. These estimators return one advantage per completion, [B],
# that the policy loss broadcasts over the completion's tokens (outcome supervision), except
# REINFORCE++, which works per token.

# The std floor of GRPO's advantage: a group whose rewards are all equal has std 0; TRL's
# GRPOTrainer adds 1e-4 to the std (not to the variance), and so do we, so the two agree to 1e-6.
GROUP_STD_EPS = 1e-4


def _grouped(scores: torch.Tensor, group_size: int, who: str) -> torch.Tensor:
    """[B] -> [P, G], with a one-line error when B is not a whole number of groups."""
    if scores.dim() != 1:
        raise ValueError(f"{who}: scores must have shape [B], got {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"{who}: {scores.shape[0]} scores do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def group_std(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Unbiased standard deviation of each group's scores, repeated to [B] (0 for G = 1)."""
    grouped = _grouped(scores, group_size, "group_std")
    if group_size == 1:
        # One sample has no spread; torch.std would give NaN (Bessel's n - 1 = 0).
        return torch.zeros_like(scores)
    return grouped.std(dim=1, unbiased=True).repeat_interleave(group_size)


def group_advantages(scores: torch.Tensor, group_size: int, scale_by_std: bool = True) -> torch.Tensor:
    """GRPO's outcome-supervised advantage (Shao et al. 2024, "DeepSeekMath", section 4.1.2), and
    Dr. GRPO's without the std (Liu et al. 2025, "Understanding R1-Zero-Like Training", section 3.1).

        GRPO:     A_i = (r_i - mean(r_group)) / (std(r_group) + eps)
        Dr. GRPO: A_i =  r_i - mean(r_group)

    std is the unbiased (n - 1) sample std, as TRL computes it; eps = GROUP_STD_EPS. Dr. GRPO drops
    the division because it weights easy and hard questions (low std) more than the rest: a bias in
    the gradient, not a normalisation.
    Shapes: `scores` [B] = [P * G] grouped row-wise; returns [B].
    """
    grouped = _grouped(scores, group_size, "group_advantages")
    # Mean of each group, the baseline every member's reward is compared to.
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if not scale_by_std:
        return centred
    # Std floor added to the std (see GROUP_STD_EPS): an all-equal group gives advantages 0, not NaN.
    return centred / (group_std(scores, group_size) + GROUP_STD_EPS)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics", eq. 4):
    each sample's baseline is the mean of the other G - 1 samples of its group,

        A_i = r_i - (1 / (G - 1)) * sum_{j != i} r_j  =  G / (G - 1) * (r_i - mean(r_group))

    so the baseline does not depend on r_i and the estimator stays unbiased. Needs G >= 2.
    Shapes: `scores` [B] = [P * G]; returns [B].
    """
    if group_size < 2:
        raise ValueError(f"rloo_advantages: the leave-one-out baseline needs groups of 2 or more, got {group_size}")
    grouped = _grouped(scores, group_size, "rloo_advantages")
    # Sum of the others = group total minus oneself.
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Discounted return from each token on, G_t = sum_{s >= t} gamma^(s - t) r_s, zero on padding.

    Shapes: [B, T] in, [B, T] out. This is GAE with V = 0 and lambda = 1 (no critic), which is
    what REINFORCE++ uses; computed by `gae` so the recursion lives once.
    """
    # With V = 0 the advantage and the return coincide; take the first.
    to_go, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return to_go


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, whiten=masked_whiten
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models", section 3): the per-token return of the KL-penalised reward, normalised over
    the whole batch rather than per prompt (a global baseline, no critic, no groups),

        r_t = -kl_coef * KL_t  (+ the score at the last token)     `losses.kl.kl_penalized_rewards`
        G_t = sum_{s >= t} gamma^(s - t) r_s
        A_t = (G_t - mean_batch(G)) / std_batch(G)                  over every response token

    Shapes: `token_rewards` and `mask` [B, T]; returns [B, T], 0 on padding. `whiten` is
    `masked_whiten`, or under torchrun its all-ranks twin (`train.distributed.masked_whiten`), so
    "the batch" is the global one.
    """
    returns = reward_to_go(token_rewards, mask, gamma)
    # Batch-level whitening over the response tokens: the paper's "global advantage normalisation".
    return whiten(returns, mask)

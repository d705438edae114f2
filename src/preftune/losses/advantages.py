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

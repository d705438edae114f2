"""Module 5, baselines: why the group baseline replaced the value model, measured on the six answers.

The policy-gradient estimate from a batch of G answers drawn from pi (a softmax over the six
answers, pi = pi_ref here) is

    g = (1/G) sum_i A_i * grad log pi(y_i),      grad_logits log pi(y) = onehot(y) - pi

with A_i = r(y_i) - b_i for some baseline b_i. Any b_i that does not depend on y_i keeps g
unbiased (E[grad log pi] = 0); a good one shrinks its variance. The candidates:

- none: b = 0 (REINFORCE; Williams 1992);
- value: b = V, a learned estimate of E_pi[r] (PPO's critic). `value_error` is how wrong the
  critic is at this prompt (a fresh N(0, value_error^2) error per batch: across prompts a critic
  is right on average and wrong on each). With value_error = 0 it is the ideal critic;
- group mean: b = mean of the G rewards, self included (Dr. GRPO; `losses.advantages.group_advantages`
  without the std). It uses y_i, so g is biased low by the factor (G - 1)/G;
- leave-one-out: b = mean of the other G - 1 (RLOO; `rloo_advantages`): unbiased;
- group mean / std: GRPO's advantage; divided by the group std, so g is rescaled as well as
  centred (not an estimate of the same gradient: its "bias" says how much it rescales).

The rewards are the answers' gold scores plus `REWARD_OFFSET`: a reward model's scores are only
defined up to a constant (Bradley-Terry sees differences), and a judge's are often all positive,
so E[r] is rarely 0. With no baseline that offset multiplies every score function; every baseline
here removes it.

Variance is the trace of g's covariance over many seeded batches; bias is the distance of the
mean estimate from the true gradient E_pi[(r - E r) grad log pi], exact on six answers. The lesson
the numbers show: a group baseline needs no critic and its variance falls as G grows; a critic is
better only while its error stays well under the rewards' spread, which a fresh value head on a
language model is not.
"""

from __future__ import annotations

import torch

from ..losses.advantages import group_advantages, rloo_advantages
from .answers import ANSWERS
from .optimum import reference_logprobs
from .preferences import DTYPE

BASELINES = ("none", "value", "group_mean", "leave_one_out", "group_mean_std")
BATCHES = 20000  # Monte Carlo batches per estimate: the 6-d gradient makes this cheap
REWARD_OFFSET = 2.0  # added to every gold score (see the module note); E[r] under pi_ref becomes 2.08


def gold_rewards() -> torch.Tensor:
    """The rewards r(y) [6]: gold quality plus REWARD_OFFSET."""
    return torch.tensor([a.gold for a in ANSWERS], dtype=DTYPE) + REWARD_OFFSET


def true_gradient(probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """E_pi[r(y) (onehot(y) - pi)] [6] = pi * (r - E_pi[r]): the exact gradient of E_pi[r] in the logits."""
    return probs * (rewards - (probs * rewards).sum())


def gradient_samples(baseline: str, group_size: int, value_error: float = 0.0, batches: int = BATCHES,
                     seed: int = 0) -> torch.Tensor:  # fmt: skip
    """`batches` estimates g [batches, 6], each from a group of `group_size` answers drawn from pi_ref."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if group_size < 2:
        raise ValueError(f"a group needs 2 or more answers, got {group_size}")
    generator = torch.Generator().manual_seed(seed)
    probs = reference_logprobs().exp()
    rewards = gold_rewards()
    answers = torch.multinomial(probs, batches * group_size, replacement=True, generator=generator)
    r = rewards[answers]  # [batches * G], group by group
    if baseline == "none":
        advantages = r
    elif baseline == "value":
        critic = (probs * rewards).sum() + value_error * torch.randn(batches, generator=generator, dtype=DTYPE)
        advantages = r - critic.repeat_interleave(group_size)
    elif baseline == "group_mean":
        advantages = group_advantages(r, group_size, scale_by_std=False)
    elif baseline == "leave_one_out":
        advantages = rloo_advantages(r, group_size)
    else:
        advantages = group_advantages(r, group_size, scale_by_std=True)
    score_function = torch.nn.functional.one_hot(answers, len(ANSWERS)).to(DTYPE) - probs  # grad log pi per draw
    per_draw = advantages.unsqueeze(-1) * score_function
    return per_draw.view(batches, group_size, -1).mean(dim=1)


def baseline_numbers(baseline: str, group_size: int, value_error: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Variance (trace of the covariance) and bias (L2 distance of the mean from the true gradient)."""
    samples = gradient_samples(baseline, group_size, value_error, seed=seed)
    truth = true_gradient(reference_logprobs().exp(), gold_rewards())
    mean = samples.mean(dim=0)
    return {
        "baseline": baseline,
        "variance": float(samples.var(dim=0, unbiased=True).sum()),
        "bias": float((mean - truth).norm()),
        "relative_bias": float((mean - truth).norm() / truth.norm()),
    }


def baselines_state(group_size: int, value_error: float) -> dict:
    """Module 5: every baseline at this group size and critic error, and variance against G."""
    if not 2 <= group_size <= 64:
        raise ValueError(f"group size must be in [2, 64], got {group_size}")
    if not 0 <= value_error <= 5:
        raise ValueError(f"value error must be in [0, 5], got {value_error}")
    rows = [baseline_numbers(b, group_size, value_error) for b in BASELINES]
    sizes = [2, 4, 8, 16, 32]
    curves = {b: [baseline_numbers(b, g, value_error)["variance"] for g in sizes] for b in ("value", "leave_one_out")}
    spread = float(gold_rewards().std())
    return {"group_size": group_size, "value_error": value_error, "reward_std": spread, "rows": rows,
            "group_sizes": sizes, "variance_by_group_size": curves}  # fmt: skip

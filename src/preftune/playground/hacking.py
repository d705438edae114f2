"""Module 4, reward hacking: optimise a proxy reward that over-values length, watch the gold reward.

The gold reward is each answer's true quality (`Answer.gold`). The proxy is a reward model that
learned that quality plus a taste for length:

    proxy(y) = gold(y) + length_bias * words(y) / max_words

For each beta the proxy-optimal policy is module 2's closed form, pi*_beta ∝ pi_ref exp(proxy / beta).
Sweeping beta from large to small traces a path away from pi_ref. Plotted against sqrt(KL(pi* || pi_ref)),
the proxy's expected value rises all the way, while the gold value rises, peaks, and falls as the
policy piles onto the longest answer: the over-optimisation curve Gao, Schulman & Hilton 2022
("Scaling Laws for Reward Model Overoptimization") measured for real reward models, where gold
reward fits d * (alpha - beta_RL * log d) with d = sqrt(KL) for RL.
"""

from __future__ import annotations

import math

import torch

from .answers import ANSWERS, LONGEST
from .optimum import exact_kl, optimal_policy
from .preferences import DTYPE

BETA_MIN, BETA_MAX = 0.02, 30.0
SWEEP_POINTS = 80
BETA_STEP = 1.3  # Step divides beta by this


def gold_rewards() -> torch.Tensor:
    return torch.tensor([a.gold for a in ANSWERS], dtype=DTYPE)


def proxy_rewards(length_bias: float) -> torch.Tensor:
    """gold + length_bias * (words / longest answer's words) [6]."""
    longest = max(a.words for a in ANSWERS)
    lengths = torch.tensor([a.words / longest for a in ANSWERS], dtype=DTYPE)
    return gold_rewards() + length_bias * lengths


def point(beta: float, length_bias: float) -> dict[str, float]:
    """Gold and proxy value of the proxy-optimal policy at this beta, and its distance from pi_ref."""
    proxy = proxy_rewards(length_bias)
    policy = optimal_policy(proxy, beta)
    kl = exact_kl(policy)
    return {
        "beta": beta,
        "kl": kl,
        "sqrt_kl": math.sqrt(max(kl, 0.0)),
        "gold": float((policy * gold_rewards()).sum()),
        "proxy": float((policy * proxy).sum()),
        "longest_prob": float(policy[LONGEST]),
    }


def sweep_betas() -> list[float]:
    """SWEEP_POINTS betas, log-spaced from BETA_MAX down to BETA_MIN."""
    ratio = math.log(BETA_MIN / BETA_MAX)
    return [BETA_MAX * math.exp(ratio * k / (SWEEP_POINTS - 1)) for k in range(SWEEP_POINTS)]


def hacking_state(beta: float, length_bias: float) -> dict:
    """Module 4: the whole curve over beta, the current point, and the gold peak."""
    if not BETA_MIN / 2 <= beta <= BETA_MAX * 2:
        raise ValueError(f"beta must be in [{BETA_MIN / 2}, {BETA_MAX * 2}], got {beta}")
    curve = [point(b, length_bias) for b in sweep_betas()]
    peak = max(curve, key=lambda p: p["gold"])
    current = point(beta, length_bias)
    policy = optimal_policy(proxy_rewards(length_bias), beta)
    return {
        "beta": beta,
        "length_bias": length_bias,
        "curve": curve,
        "current": current,
        "peak": peak,
        "policy": policy.tolist(),
        "proxy_rewards": proxy_rewards(length_bias).tolist(),
        "gold_rewards": gold_rewards().tolist(),
        "longest": LONGEST,
    }


def next_beta(beta: float) -> float:
    """Step: lower beta by one notch (never below BETA_MIN)."""
    return max(BETA_MIN, beta / BETA_STEP)

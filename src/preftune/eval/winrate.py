"""Win rate of a policy against a reference, with ties, a 95% interval, and length control.

Each prompt is one unit. Its outcome is the mean over its comparisons of 1 (policy better), 1/2
(tie) or 0 (reference better), so a prompt with one comparison scores 0, 1/2 or 1 and a prompt
with several scores anything in [0, 1]. The win rate is the mean outcome over prompts.

Interval: the Wilson score interval (Wilson 1927) for a proportion p = win rate over n prompts.
An outcome in [0, 1] with mean p has variance at most p(1 - p), the Bernoulli case, so Wilson's
interval is valid (conservative) with ties and with several comparisons per prompt; unlike the
plain normal interval it does not collapse to a point when every comparison goes one way.

Length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval", eq. 2-3): fit a
logistic regression of the outcome on the length difference,
    P(policy preferred) = sigmoid(theta + phi * tanh(delta_len / std(delta_len))),
and report sigmoid(theta), the predicted win rate had the two answers been equally long. The tanh
bounds the influence of extreme length gaps, as in the paper. With one policy and one reference
the paper's model term reduces to the intercept theta; its instruction-difficulty term is left
out (it needs many models per instruction). Ties enter as soft labels of 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass
class WinRate:
    win_rate: float
    ci95: tuple[float, float]
    wins: int  # comparisons the policy won
    losses: int
    ties: int
    n_prompts: int

    @property
    def n_comparisons(self) -> int:
        return self.wins + self.losses + self.ties

    def to_dict(self) -> dict:
        return {"win_rate": self.win_rate, "ci95": list(self.ci95), "wins": self.wins, "losses": self.losses,
                "ties": self.ties, "n_prompts": self.n_prompts}  # fmt: skip


def comparison_outcomes(
    policy_scores: Sequence[float], ref_scores: Sequence[float], tie_tolerance: float = 0.0
) -> np.ndarray:
    """1.0 where the policy scored higher, 0.0 where lower, 0.5 where |difference| <= tie_tolerance."""
    policy, ref = np.asarray(policy_scores, dtype=float), np.asarray(ref_scores, dtype=float)
    if policy.shape != ref.shape:
        raise ValueError(f"{policy.size} policy scores but {ref.size} reference scores")
    diff = policy - ref
    return np.where(np.abs(diff) <= tie_tolerance, 0.5, (diff > 0).astype(float))


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    if n <= 0:
        return (0.0, 1.0)
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


def win_rate(
    policy_scores: Sequence[float],
    ref_scores: Sequence[float],
    prompt_index: Sequence[int] | None = None,
    tie_tolerance: float = 0.0,
) -> WinRate:
    """Win rate of paired scores (policy[i] against ref[i]); `prompt_index[i]` groups comparisons
    by prompt (default: one comparison per prompt). See the module docstring for the interval."""
    outcomes = comparison_outcomes(policy_scores, ref_scores, tie_tolerance)
    if outcomes.size == 0:
        raise ValueError("win rate of zero comparisons")
    per_prompt = prompt_means(outcomes, prompt_index)
    rate = float(per_prompt.mean())
    return WinRate(
        win_rate=rate,
        ci95=wilson_interval(rate, per_prompt.size),
        wins=int((outcomes == 1.0).sum()),
        losses=int((outcomes == 0.0).sum()),
        ties=int((outcomes == 0.5).sum()),
        n_prompts=int(per_prompt.size),
    )


def prompt_means(outcomes: np.ndarray, prompt_index: Sequence[int] | None) -> np.ndarray:
    """Mean outcome per prompt, in order of first appearance."""
    if prompt_index is None:
        return np.asarray(outcomes, dtype=float)
    if len(prompt_index) != len(outcomes):
        raise ValueError(f"{len(prompt_index)} prompt indices for {len(outcomes)} comparisons")
    groups: dict[int, list[float]] = {}
    for key, outcome in zip(prompt_index, outcomes, strict=True):
        groups.setdefault(key, []).append(float(outcome))
    return np.array([sum(v) / len(v) for v in groups.values()])


# ---------------------------------------------------------------------------------------- LC


def fit_logistic(
    features: np.ndarray, targets: np.ndarray, ridge: float = 1e-3, iterations: int = 50
) -> np.ndarray:
    """Logistic regression by Newton's method (IRLS), targets in [0, 1] (soft labels allowed).

    Minimises mean cross-entropy + ridge/2 * |w|^2. The small ridge keeps the fit finite when the
    data are separable (one side wins every comparison), where the unpenalised optimum is at
    infinity. features: [N, K] (include a column of ones for an intercept) -> weights [K].
    """
    x, y = np.asarray(features, dtype=float), np.asarray(targets, dtype=float)
    n, k = x.shape
    weights = np.zeros(k)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ weights)))
        gradient = x.T @ (p - y) / n + ridge * weights
        hessian = (x.T * (p * (1 - p))) @ x / n + ridge * np.eye(k)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return weights


def length_features(policy_lengths: Sequence[float], ref_lengths: Sequence[float]) -> np.ndarray:
    """[1, tanh(delta / std(delta))] per comparison (Dubois et al. 2024's length term)."""
    delta = np.asarray(policy_lengths, dtype=float) - np.asarray(ref_lengths, dtype=float)
    scale = delta.std()
    normalized = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)
    return np.stack([np.ones_like(delta), normalized], axis=1)


@dataclass
class LengthControlled:
    lc_win_rate: float
    length_coef: float  # phi: how much a (normalised) length advantage moves the log-odds
    lc_ci95: tuple[float, float] | None = None  # percentile bootstrap over prompts


def lc_win_rate(
    policy_scores: Sequence[float],
    ref_scores: Sequence[float],
    policy_lengths: Sequence[float],
    ref_lengths: Sequence[float],
    prompt_index: Sequence[int] | None = None,
    tie_tolerance: float = 0.0,
    bootstrap: int = 200,
    seed: int = 0,
) -> LengthControlled:
    """Length-controlled win rate sigmoid(theta) (module docstring), with a bootstrap interval
    that resamples prompts (all comparisons of a prompt together) `bootstrap` times (0: none)."""
    outcomes = comparison_outcomes(policy_scores, ref_scores, tie_tolerance)
    features = length_features(policy_lengths, ref_lengths)
    theta, phi = fit_logistic(features, outcomes)
    interval = None
    if bootstrap > 0:
        groups = _group_rows(prompt_index, len(outcomes))
        rng = np.random.default_rng(seed)
        estimates = []
        for _ in range(bootstrap):
            rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
            # Refit on the resample, keeping the full data's length scale so estimates compare.
            estimates.append(_sigmoid(fit_logistic(features[rows], outcomes[rows])[0]))
        interval = (float(np.percentile(estimates, 2.5)), float(np.percentile(estimates, 97.5)))
    return LengthControlled(_sigmoid(theta), float(phi), interval)


def _group_rows(prompt_index: Sequence[int] | None, n: int) -> list[np.ndarray]:
    if prompt_index is None:
        return [np.array([i]) for i in range(n)]
    groups: dict[int, list[int]] = {}
    for row, key in enumerate(prompt_index):
        groups.setdefault(key, []).append(row)
    return [np.array(rows) for rows in groups.values()]


def _sigmoid(x: float) -> float:
    return float(1 / (1 + math.exp(-x)))

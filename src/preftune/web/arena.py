"""Model arena: a leaderboard of the policies behind a project's answers, from people's votes.

Items imported with a `models` list (see `candidates.py`) know which policy wrote each answer. Each
human vote on such an item is one battle: a win for the chosen side, and a tie (half a win each)
for "tie" and "both bad", as LMSYS's Chatbot Arena counts them. Skips and judges' votes are left
out: the leaderboard is what people preferred.

Strengths are the Bradley–Terry maximum-likelihood fit, P(i beats j) = p_i / (p_i + p_j), found
with Hunter's (2004) minorise-maximise iteration (equation 3 of "MM algorithms for generalized
Bradley–Terry models"): p_i <- W_i / sum_j n_ij / (p_i + p_j), where W_i counts wins (ties as one
half) and n_ij battles. A model that never won would fit p = 0; `prior_ties` virtual ties between
every pair keep every strength finite and pull thin evidence toward "equal". Ratings are on the
Elo scale the arena uses: 1000 + 400 log10(p_i / geometric mean of p). Confidence intervals are the
2.5 and 97.5 percentiles over bootstrap resamples of the battles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
ELO_SCALE, ELO_BASE = 400.0, 1000.0


@dataclass
class ArenaRow:
    model: str
    rating: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int

    @property
    def battles(self) -> int:
        return self.wins + self.ties + self.losses


def battles(items: list[dict[str, Any]], votes: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """(model a, model b, score of a) per human vote on an item whose two models are known."""
    models = {
        item["id"]: (item["model_a"], item["model_b"])
        for item in items
        if item.get("model_a") and item.get("model_b") and item["model_a"] != item["model_b"]
    }
    return [
        (*models[vote["item_id"]], SCORE[vote["choice"]])
        for vote in votes
        if vote["item_id"] in models and vote["user_role"] != "judge" and vote["choice"] in SCORE
    ]


def fit_strengths(
    fights: list[tuple[str, str, float]], models: list[str], prior_ties: float = 1.0, iterations: int = 2000
) -> np.ndarray:
    """Bradley–Terry strengths p (geometric mean 1), in the order of `models` (module docstring)."""
    index = {model: i for i, model in enumerate(models)}
    k = len(models)
    wins = np.zeros(k)
    pairs = np.zeros((k, k))  # battles between i and j, symmetric
    for first, second, score in fights:
        i, j = index[first], index[second]
        wins[i] += score
        wins[j] += 1.0 - score
        pairs[i, j] += 1
        pairs[j, i] += 1
    prior = prior_ties * (1 - np.eye(k))
    wins = wins + prior.sum(axis=1) / 2
    pairs = pairs + prior
    strength = np.ones(k)
    for _ in range(iterations):
        updated = wins / (pairs / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated /= np.exp(np.log(updated).mean())
        if np.max(np.abs(updated - strength)) < 1e-12:
            return updated
        strength = updated
    return strength


def to_elo(strength: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE * np.log10(strength)


def leaderboard(
    fights: list[tuple[str, str, float]], prior_ties: float = 1.0, rounds: int = 200, seed: int = 0
) -> list[ArenaRow]:
    """Rows by rating, best first, with bootstrap 95% intervals (`rounds` resamples, seeded)."""
    models = sorted({m for a, b, _ in fights for m in (a, b)})
    if len(models) < 2:
        return []
    ratings = to_elo(fit_strengths(fights, models, prior_ties))
    rng = np.random.default_rng(seed)
    samples = np.empty((rounds, len(models)))
    for r in range(rounds):
        drawn = rng.integers(0, len(fights), len(fights))
        samples[r] = to_elo(fit_strengths([fights[i] for i in drawn], models, prior_ties))
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    rows = []
    for i, model in enumerate(models):
        mine = [(s if a == model else 1 - s) for a, b, s in fights if model in (a, b)]
        rows.append(
            ArenaRow(model, float(ratings[i]), float(low[i]), float(high[i]),
                     wins=sum(s == 1 for s in mine), ties=sum(s == 0.5 for s in mine),
                     losses=sum(s == 0 for s in mine))  # fmt: skip
        )
    return sorted(rows, key=lambda row: -row.rating)


def win_probability(rating_a: float, rating_b: float) -> float:
    """P(a beats b) implied by two Elo-scale ratings."""
    return 1.0 / (1.0 + math.pow(10.0, (rating_b - rating_a) / ELO_SCALE))

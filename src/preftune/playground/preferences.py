"""Module 1, preferences to rewards: labels on pairs of the six answers, and a Bradley–Terry fit.

A label is `(winner, loser)`, answer indices into `ANSWERS`. Labels come from two places: the
person clicking "A is better than B", and a simulated labeler whose hidden taste is each answer's
`gold` score. The simulated labeler follows the Bradley–Terry model itself, with a temperature
`noise`: P(a beats b) = sigmoid((gold_a - gold_b) / noise). With noise 0 it always agrees with its
taste; as noise grows its clicks approach coin flips, and the fitted rewards flatten towards 0
(the maximum-likelihood rewards are roughly gold / noise).

The fit maximises the Bradley–Terry likelihood with `losses.reward.bradley_terry`, the same loss
that trains the reward model. `prior` adds that many pseudo-votes each way on every pair (additive
smoothing): without it, a set of labels with a perfect ranking has no finite maximum-likelihood
reward (the fit would push the gaps to infinity), and the KL-regularised optimum of module 2 and
the DPO fixed point of module 3 would not exist either.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from itertools import combinations

import torch

from ..losses.reward import bradley_terry
from .answers import ANSWERS

N_ANSWERS = len(ANSWERS)
# The 15 unordered pairs a labeler can be shown.
UNORDERED_PAIRS = tuple(combinations(range(N_ANSWERS), 2))
# The 30 ordered (chosen, rejected) pairs every fit runs over, weighted by their vote counts.
ORDERED_PAIRS = tuple((i, j) for i in range(N_ANSWERS) for j in range(N_ANSWERS) if i != j)
DTYPE = torch.float64  # the playground's numbers are shown to 4 decimals; float64 leaves no doubt

Label = tuple[int, int]


@dataclass(frozen=True)
class LabelSet:
    """Everything that determines the labelled pairs: the person's clicks plus the simulated ones."""

    user: tuple[Label, ...] = ()
    simulated: int = 30
    noise: float = 0.5
    seed: int = 0
    prior: float = 0.5
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.simulated < 0 or self.simulated > 5000:
            raise ValueError(f"simulated labels must be in [0, 5000], got {self.simulated}")
        if not 0 <= self.noise <= 100:
            raise ValueError(f"noise must be in [0, 100], got {self.noise}")
        if not 0 < self.prior <= 100:
            raise ValueError(f"prior must be in (0, 100], got {self.prior}")

    def labels(self) -> list[Label]:
        """The person's labels, then the simulated labeler's."""
        return list(self.user) + simulated_labels(self.simulated, self.noise, self.seed)

    def weights(self) -> torch.Tensor:
        """[30] vote counts of `ORDERED_PAIRS` (chosen beat rejected), plus the prior pseudo-votes."""
        if "weights" not in self._cache:
            counts = vote_counts(self.labels())
            self._cache["weights"] = torch.tensor(
                [counts[i][j] + self.prior for i, j in ORDERED_PAIRS], dtype=DTYPE
            )
        return self._cache["weights"]


def parse_labels(text: str) -> tuple[Label, ...]:
    """'0>3,2>5' -> ((0, 3), (2, 5)); raises ValueError naming the bad item."""
    labels = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        winner, sep, loser = item.partition(">")
        if not sep or not winner.isdigit() or not loser.isdigit():
            raise ValueError(f"label {item!r} is not WINNER>LOSER (answer indices)")
        pair = (int(winner), int(loser))
        if pair[0] == pair[1] or max(pair) >= N_ANSWERS:
            raise ValueError(f"label {item!r} must name two different answers in 0..{N_ANSWERS - 1}")
        labels.append(pair)
    if len(labels) > 5000:
        raise ValueError(f"at most 5000 labels, got {len(labels)}")
    return tuple(labels)


def format_labels(labels) -> str:
    return ",".join(f"{winner}>{loser}" for winner, loser in labels)


def labeler_win_probability(gold_a: float, gold_b: float, noise: float) -> float:
    """P(the simulated labeler prefers a over b): Bradley–Terry with temperature `noise`."""
    if noise == 0:
        return 1.0 if gold_a > gold_b else 0.0 if gold_a < gold_b else 0.5
    z = (gold_a - gold_b) / noise
    # The two branches keep exp() from overflowing for large |z|.
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _draw(seed: int, index: int) -> tuple[Label, float, bool]:
    # Label k depends only on (seed, k): moving the noise slider re-decides the same draws, so the
    # labels change smoothly with noise instead of being reshuffled.
    rng = random.Random(seed * 1_000_003 + index)
    pair = UNORDERED_PAIRS[rng.randrange(len(UNORDERED_PAIRS))]
    return pair, rng.random(), rng.random() < 0.5


def simulated_labels(count: int, noise: float, seed: int) -> list[Label]:
    """`count` labels from the simulated labeler (deterministic in `seed`)."""
    labels = []
    for k in range(count):
        (a, b), u, _ = _draw(seed, k)
        a_wins = u < labeler_win_probability(ANSWERS[a].gold, ANSWERS[b].gold, noise)
        labels.append((a, b) if a_wins else (b, a))
    return labels


def next_pair(seed: int, index: int) -> Label:
    """The pair (left, right) shown to the person as their next question, in a random order."""
    (a, b), _, swap = _draw(seed + 7919, index)
    return (b, a) if swap else (a, b)


def vote_counts(labels) -> list[list[int]]:
    """counts[w][l]: how many labels say answer w beat answer l."""
    counts = [[0] * N_ANSWERS for _ in range(N_ANSWERS)]
    for winner, loser in labels:
        counts[winner][loser] += 1
    return counts


def pair_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [30], rejected [30]) answer indices of `ORDERED_PAIRS`."""
    chosen, rejected = zip(*ORDERED_PAIRS, strict=True)
    return torch.tensor(chosen), torch.tensor(rejected)


def weighted_bt_loss(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean Bradley–Terry loss over the votes: sum_w weight * bradley_terry(r_c, r_r) / sum weight."""
    chosen, rejected = pair_indices()
    per_pair, _ = bradley_terry(rewards[chosen], rewards[rejected])
    return (per_pair * weights).sum() / weights.sum()


def fit_rewards(weights: torch.Tensor) -> torch.Tensor:
    """Maximum-likelihood Bradley–Terry rewards [6] for the weighted votes, centred to mean 0.

    The loss is convex in the rewards; L-BFGS reaches its minimum to ~1e-12 in a few dozen
    iterations. Starting from 0, the iterates stay centred (BT sees differences only, so every
    gradient sums to 0); the explicit centring only removes rounding drift.
    """
    rewards = torch.zeros(N_ANSWERS, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [rewards],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = weighted_bt_loss(rewards, weights)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = rewards.detach()
    return fitted - fitted.mean()


def preference_state(labels: LabelSet) -> dict:
    """Everything module 1 shows, as plain JSON-ready data."""
    all_labels = labels.labels()
    weights = labels.weights()
    rewards = fit_rewards(weights)
    state = {
        "labels": format_labels(labels.user),
        "user_count": len(labels.user),
        "simulated": labels.simulated,
        "total": len(all_labels),
        "rewards": rewards.tolist(),
        "gold": [a.gold for a in ANSWERS],
        "loss": float(weighted_bt_loss(rewards, weights)),
        "spread": float(rewards.max() - rewards.min()),
        "counts": vote_counts(all_labels),
        "next_pair": list(next_pair(labels.seed, len(labels.user))),
        "accuracy": None,
        "labeler_agreement": None,
    }
    if all_labels:
        winners = torch.tensor([w for w, _ in all_labels])
        losers = torch.tensor([loser for _, loser in all_labels])
        # The loss's own metrics on the real labels: how many the fitted rewards rank correctly.
        _, metrics = bradley_terry(rewards[winners], rewards[losers])
        state["accuracy"] = float(metrics["accuracy"])
        gold = torch.tensor([a.gold for a in ANSWERS], dtype=DTYPE)
        state["labeler_agreement"] = float((gold[winners] > gold[losers]).to(DTYPE).mean())
    return state

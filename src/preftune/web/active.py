"""Active selection: which items an annotator should see first, so each vote teaches the most.

An item is worth a vote when the current reward model cannot tell its two answers apart
(uncertainty: P(a beats b) near one half) or when the people who voted on it disagree. Pure
uncertainty sampling keeps asking about the same kind of item and can miss whole regions the
model is confidently wrong about, so a share of every queue stays random (the usual remedy, as in
epsilon-greedy active learning). `priority_order` is the one place the ordering is decided: the
labeling app's "reorder queues" action and `bench/active_selection.py` both call it.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Iterable

RANDOM_SHARE = 0.25  # one item in four is drawn at random, whatever the scores say


def uncertainty(p_a_wins: float) -> float:
    """1 when the model gives each answer even odds, 0 when it is sure: 1 - |2p - 1|."""
    return 1.0 - abs(2.0 * p_a_wins - 1.0)


def reward_uncertainty(reward_a: float, reward_b: float) -> float:
    """Uncertainty of a Bradley–Terry reward model on one pair, P(a beats b) = sigmoid(r_a - r_b)."""
    return uncertainty(1.0 / (1.0 + math.exp(-(reward_a - reward_b))))


def disagreement(choices: Iterable[str]) -> float:
    """Share of votes that differ from the most common one (0 with fewer than two votes)."""
    counted = Counter(choice for choice in choices if choice != "skip")
    total = sum(counted.values())
    return 0.0 if total < 2 else 1.0 - counted.most_common(1)[0][1] / total


def priority_order(
    scores: dict[Hashable, float], random_share: float = RANDOM_SHARE, seed: int | None = None
) -> list[Hashable]:
    """Items best first: the highest scores, with every 1/random_share-th slot a random pick from
    the rest. Ties in score are broken at random, so equal items are not always seen in id order."""
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"random_share must be in [0, 1], got {random_share}")
    rng = random.Random(seed)
    ranked = sorted(scores, key=lambda item: (-scores[item], rng.random()))
    order: list[Hashable] = []
    taken: set = set()
    credit = 0.0
    while len(order) < len(ranked):
        credit += random_share
        if credit >= 1.0:
            credit -= 1.0
            pick = rng.choice([item for item in ranked if item not in taken])
        else:
            pick = next(item for item in ranked if item not in taken)
        order.append(pick)
        taken.add(pick)
    return order

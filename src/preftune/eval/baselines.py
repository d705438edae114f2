"""One-rule baselines for a reward model's pairwise accuracy: what its held-out figure must beat.

A reward model that ranks 56% of held-out pairs the way the labels do sounds like it learned
something until a rule that reads one feature of each answer gets 52% (shorter wins) or 76%
(easier to read wins). Length is the usual floor (Singhal et al. 2023); for the demo's kid judge,
whose ranking term is Flesch reading ease, readability is the ceiling a one-feature rule reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from preftune.data.schema import PreferencePair


def rule_outcomes(pairs: Sequence[PreferencePair], feature: Callable[[str], float]) -> list[float]:
    """Per pair: 1 if the answer with the higher `feature` is the chosen one, 0 if it is the
    rejected one, 0.5 when both answers score the same (the rule cannot pick)."""
    outcomes = []
    for pair in pairs:
        chosen, rejected = feature(pair.chosen.content), feature(pair.rejected.content)
        outcomes.append(0.5 if chosen == rejected else float(chosen > rejected))
    return outcomes


def shorter(text: str) -> float:
    """The feature of "shorter wins": minus the answer's length in characters."""
    return -float(len(text))


def longer(text: str) -> float:
    """The feature of "longer wins": the answer's length in characters."""
    return float(len(text))


def easier_to_read(text: str) -> float:
    """The feature of "easier to read wins": Flesch reading ease in [0, 1], as the kid judge reads it."""
    from preftune.judges.kid import reading_ease

    return reading_ease(text)


def rule_accuracies(pairs: Sequence[PreferencePair], rules: dict[str, Callable[[str], float]]) -> dict[str, float]:
    """{rule name: fraction of pairs the rule ranks as the labels do, ties counted half}."""
    if not pairs:
        raise ValueError("rule_accuracies needs at least one pair")
    return {name: sum(rule_outcomes(pairs, feature)) / len(pairs) for name, feature in rules.items()}

"""One-rule baselines: each pair's outcome by hand, ties counted half."""

from __future__ import annotations

import pytest

from preftune.data.schema import Message, PreferencePair, user_prompt
from preftune.eval.baselines import easier_to_read, longer, rule_accuracies, rule_outcomes, shorter


def pair(chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(user_prompt("Explain rain."), Message("assistant", chosen), Message("assistant", rejected))


EASY = "Rain falls from clouds. It is water."
HARD = "Precipitation constitutes condensation of atmospheric vapour into hydrometeors."
PAIRS = [pair("short", "much longer"), pair("a bit longer", "tiny"), pair("same", "size"), pair(EASY, HARD)]


def test_each_pair_scores_one_zero_or_a_half():
    # chosen shorter / chosen longer / equal length / EASY (36 chars) against HARD (80 chars)
    assert rule_outcomes(PAIRS, shorter) == [1.0, 0.0, 0.5, 1.0]
    assert rule_outcomes(PAIRS, longer) == [0.0, 1.0, 0.5, 0.0]
    assert rule_outcomes(PAIRS[3:], easier_to_read) == [1.0]  # short words and sentences read easier
    assert rule_outcomes([pair(HARD, EASY)], easier_to_read) == [0.0]


def test_accuracies_are_the_mean_outcome_and_need_pairs():
    assert rule_accuracies(PAIRS, {"shorter": shorter, "longer": longer}) == {"shorter": 2.5 / 4, "longer": 1.5 / 4}
    with pytest.raises(ValueError, match="at least one pair"):
        rule_accuracies([], {"shorter": shorter})

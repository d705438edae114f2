"""Agreement statistics against values computed by hand on small fixed tables."""

from __future__ import annotations

import math

import pytest

from preftune.web.agreement import (
    cohen_kappa,
    krippendorff_alpha,
    nominal_value,
    ordinal_value,
    pairwise_kappa,
)
from preftune.web.quality import agreement

# Six items, three annotators; X and Z each miss nothing, Y misses item 6, Z misses item 3.
CHOICES = {
    1: {"X": "a", "Y": "a", "Z": "a"},
    2: {"X": "a", "Y": "b", "Z": "a"},
    3: {"X": "b", "Y": "b"},
    4: {"X": "tie", "Y": "a", "Z": "tie"},
    5: {"X": "b", "Y": "b", "Z": "b"},
    6: {"X": "a", "Z": "both_bad"},
}


def _nominal_table():
    return {unit: {r: nominal_value(c) for r, c in row.items()} for unit, row in CHOICES.items()}


def test_krippendorff_alpha_nominal_by_hand():
    # Coincidences o_ck: each ordered pair of values from different coders in a unit adds 1/(m_u - 1).
    #   unit 1 (a,a,a): o_aa += 6 * 1/2 = 3        unit 2 (a,b,a): o_aa += 1, o_ab += 1, o_ba += 1
    #   unit 3 (b,b):   o_bb += 2                   unit 4 (tie,a,tie): o_tt += 1, o_at += 1, o_ta += 1
    #   unit 5 (b,b,b): o_bb += 3                   unit 6 (a,both_bad): o_ad += 1, o_da += 1
    # Marginals n_a = 7, n_b = 6, n_tie = 2, n_both_bad = 1; n = 16.
    # D_o = (off-diagonal coincidences) / n = 6 / 16
    # D_e = (n^2 - sum n_c^2) / (n (n - 1)) = (256 - 90) / 240 = 166 / 240
    # alpha = 1 - D_o / D_e = 1 - 90 / 166 = 38 / 83
    assert krippendorff_alpha(_nominal_table(), "nominal") == pytest.approx(38 / 83, abs=1e-12)


def test_krippendorff_alpha_ordinal_by_hand():
    # Signed scale: A slightly -2, A negligibly -1, tie 0, B slightly 2, B clearly 3.
    table = {
        1: {"X": ordinal_value("a", 2), "Y": ordinal_value("a", 1)},
        2: {"X": ordinal_value("tie", None), "Y": ordinal_value("tie", None)},
        3: {"X": ordinal_value("b", 3), "Y": ordinal_value("b", 2)},
        # both_bad has no place on the scale, so unit 4 has one value and is not pairable.
        4: {"X": ordinal_value("both_bad", None), "Y": ordinal_value("a", 4)},
    }
    assert table[1] == {"X": -2, "Y": -1} and table[4]["X"] is None
    # Values present: n_-2 = 1, n_-1 = 1, n_0 = 2, n_2 = 1, n_3 = 1 (n = 6).
    # Ordinal distance d(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2, e.g. d(-2,-1) = d(2,3) = 1.
    # D_o = (o(-2,-1) d + o(-1,-2) d + o(2,3) d + o(3,2) d) / n = 4 / 6.
    # Sum over c < k of n_c n_k d(c, k): 1 + 12.5 + 16 + 25 + 4.5 + 9 + 16 + 4.5 + 12.5 + 1 = 102,
    # so D_e = 2 * 102 / (6 * 5) = 6.8 and alpha = 1 - (4/6) / 6.8 = 46 / 51.
    assert krippendorff_alpha(table, "ordinal") == pytest.approx(46 / 51, abs=1e-12)


def test_cohen_kappa_per_pair_by_hand():
    # X,Y share items 1-5: agree on 1, 3, 5 (p_o = 3/5); X: a 2, b 2, tie 1; Y: a 2, b 3.
    #   p_e = (2*2 + 2*3) / 25 = 0.4, kappa = (0.6 - 0.4) / 0.6 = 1/3.
    # X,Z share 1, 2, 4, 5, 6: agree on four (p_o = 0.8); X: a 3, tie 1, b 1; Z: a 2, tie 1, b 1, both_bad 1.
    #   p_e = (3*2 + 1 + 1) / 25 = 0.32, kappa = 0.48 / 0.68 = 12/17.
    # Y,Z share 1, 2, 4, 5: agree on 1, 5 (p_o = 0.5); Y: a 2, b 2; Z: a 2, tie 1, b 1.
    #   p_e = (2*2 + 2*1) / 16 = 0.375, kappa = 0.125 / 0.625 = 1/5.
    got = pairwise_kappa(_nominal_table())
    assert [(x, y, n) for x, y, n, _ in got] == [("X", "Y", 5), ("X", "Z", 5), ("Y", "Z", 4)]
    assert [k for *_, k in got] == pytest.approx([1 / 3, 12 / 17, 1 / 5], abs=1e-12)


def test_undefined_agreement_is_nan_not_an_error():
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))  # p_e = 1
    assert math.isnan(krippendorff_alpha({1: {"X": 0, "Y": 0}}))  # one value only
    assert math.isnan(krippendorff_alpha({1: {"X": 0}, 2: {"Y": 1}}))  # nothing pairable
    with pytest.raises(ValueError, match="equal-length"):
        cohen_kappa(["a"], [])


def test_agreement_from_votes_matches_the_table():
    votes = [
        {"item_id": unit, "user_id": rater, "user_name": rater, "choice": choice, "strength": None}
        for unit, row in CHOICES.items()
        for rater, choice in row.items()
    ]
    votes.append({"item_id": 7, "user_id": "X", "user_name": "X", "choice": "skip", "strength": None})
    result = agreement(votes)
    assert result.alpha_nominal == pytest.approx(38 / 83, abs=1e-12)
    assert result.shared_items == 6
    assert math.isnan(result.alpha_ordinal)  # only the tie is on the ordinal scale

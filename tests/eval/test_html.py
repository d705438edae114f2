"""The eval report says what the kid judge measures and what it cannot, only when it is used."""

from __future__ import annotations

import pytest

from preftune.eval.html import render_report
from preftune.judges.kid import JUDGE_NOTE


def _result(judge: str) -> dict:
    entry = {"win_rate": 0.6, "ci95": [0.45, 0.73], "ties": 1, "wins": 23, "losses": 16}
    return {"model": "policy", "ref": "base", "n_prompts": 40, "judges": {judge: entry}, "gold": judge}


@pytest.mark.parametrize("judge", ["kid", "judge:kid"])
def test_report_explains_the_kid_judge(judge):
    page = render_report(_result(judge), [])
    assert "id='kid-judge-note'" in page
    assert "cannot tell whether an answer is true" in page and "coherence" in JUDGE_NOTE


def test_report_has_no_kid_note_for_other_judges():
    assert "kid-judge-note" not in render_report(_result("judge:sentiment"), [])

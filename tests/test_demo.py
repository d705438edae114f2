"""The demo end to end on the real SmolLM2 (slow: CI runs it with `pytest -m slow`)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.demo import FULL, QUICK, demo_prompts, split_prompts


def test_prompt_set_and_split_are_disjoint():
    prompts = demo_prompts()
    assert 150 <= len(prompts) <= 300 and len(set(prompts)) == len(prompts)
    for size in (QUICK, FULL):
        train, held_out = split_prompts(prompts, size)
        assert not set(train) & set(held_out)
        assert (len(train), len(held_out)) == (size.train_prompts, size.eval_prompts)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    kid = summary["judges"]["kid"]
    low, high = kid["ci95"]
    assert 0 <= low <= kid["win_rate"] <= high <= 1
    assert summary["kl"]["mean"] >= 0 and summary["n_prompts"] == QUICK.eval_prompts
    assert len(summary["examples"]) == 3
    report = (out / "report.html").read_text()
    # The report shows the same numbers eval.json holds.
    assert f"{kid['win_rate']:.3f}" in report or f"{100 * kid['win_rate']:.1f}" in report
    assert re.search(r"kid", report)
    assert f"{100 * kid['win_rate']:.1f}%" in result.stderr

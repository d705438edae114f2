"""The demo end to end on the real SmolLM2 (slow: CI runs it with `pytest -m slow`)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.data.schema import Message, PreferencePair, user_prompt
from preftune.demo import (
    FULL,
    MIN_SCORE_GAP,
    QUICK,
    best_against_worst,
    demo_prompts,
    dpo_training_pairs,
    label_by_kid_judge,
    split_by_prompt,
    split_prompts,
)


def scored_pair(prompt: str, chosen: str, rejected: str, kid: tuple[float, float] | None = None) -> PreferencePair:
    meta = {"kid": list(kid)} if kid else {}
    return PreferencePair(user_prompt(prompt), Message("assistant", chosen), Message("assistant", rejected), meta=meta)


def test_prompt_set_and_split_are_disjoint():
    prompts = demo_prompts()
    assert 150 <= len(prompts) <= 300 and len(set(prompts)) == len(prompts)
    for size in (QUICK, FULL):
        train, held_out = split_prompts(prompts, size)
        assert not set(train) & set(held_out)
        assert (len(train), len(held_out)) == (size.train_prompts, size.eval_prompts)


def test_best_against_worst_keeps_each_prompts_widest_gap_and_first_unscored_pair():
    pairs = [
        scored_pair("p1", "b", "c", (0.6, 0.4)),
        scored_pair("p1", "a", "c", (0.9, 0.4)),  # the best answer against the worst
        scored_pair("p1", "a", "b", (0.9, 0.6)),
        scored_pair("p2", "x", "y", (0.5, 0.3)),
        scored_pair("p3", "first vote", "other"),
        scored_pair("p3", "second vote", "other"),
    ]
    picked = best_against_worst(pairs)
    assert [(p.prompt[-1].content, p.chosen.content, p.rejected.content) for p in picked] == [
        ("p1", "a", "c"),
        ("p2", "x", "y"),
        ("p3", "first vote", "other"),
    ]


def test_dpo_trains_on_best_against_worst_unless_told_every_pair():
    pairs = [scored_pair("a", "x", "y", (0.9, 0.2)), scored_pair("a", "x", "z", (0.9, 0.5)), scored_pair("b", "u", "v", (0.6, 0.1))]
    assert dpo_training_pairs(pairs, QUICK) == [pairs[0], pairs[2]]
    assert dpo_training_pairs(pairs, dataclasses.replace(QUICK, dpo_all_pairs=True)) == pairs


def test_split_by_prompt_holds_out_every_fifth_prompt_whole():
    pairs = [scored_pair(f"p{n}", f"a{k}", f"b{k}") for n in range(11) for k in range(n % 3 + 1)]
    train, held_out = split_by_prompt(pairs)
    assert {p.prompt[-1].content for p in held_out} == {"p4", "p9"}
    assert len(held_out) == (4 % 3 + 1) + (9 % 3 + 1)  # every pair of those prompts, none of the others
    assert len(train) + len(held_out) == len(pairs)
    assert not {p.prompt[-1].content for p in train} & {"p4", "p9"}


def test_kid_labels_are_every_separated_pair_with_the_higher_kid_score_chosen():
    prompt = "Explain rain to a 5-year-old."
    answers = [
        "Rain is water that falls from clouds. The clouds get full and heavy, so the drops fall down.",
        "Precipitation constitutes the condensation of atmospheric water vapour into hydrometeors.",
        "Rain is water that falls from clouds. The clouds get full and heavy, so the drops fall down.",
        "Rain is when clouds drop water on us. It helps plants grow.",
    ]
    pairs, ties = label_by_kid_judge([prompt], [answers])
    assert len(pairs) + ties == 6  # every pair of four answers, once
    texts = {(p.chosen.content, p.rejected.content) for p in pairs}
    assert (answers[0], answers[1]) in texts and (answers[3], answers[1]) in texts  # jargon loses
    for pair in pairs:
        high, low = pair.meta["kid"]
        assert high - low >= MIN_SCORE_GAP and pair.meta["prompt_index"] == 0
        assert pair.chosen.content != pair.rejected.content  # the identical answers are no pair


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--ppo", "--out", str(out)])
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
    # The reward model is scored on pairs of prompts it never trained on, and says so.
    rm = summary["reward_model"]
    assert rm["held_out_pairs"] > 0 and 0 <= rm["held_out_accuracy"] <= 1
    assert f"reward model: {100 * rm['held_out_accuracy']:.1f}% of {rm['held_out_pairs']} held-out pairs" in result.stderr
    for name, accuracy in [("reward model", rm["held_out_accuracy"]), *rm["rule_baselines"].items()]:
        assert f"<tr data-ranker='{name}'><td>{name}</td><td>{100 * accuracy:.1f}%</td></tr>" in report
    # DPO and both PPO runs are in the report, with the numbers eval.json holds.
    assert str(out / "dpo") in report or "dpo" in summary["demo"]["runs"]
    assert set(summary["ppo"]) == {"KL-penalised", "no KL (kl_coef 0)"}
    assert "id='proxy-vs-gold'" in report
    for label, entry in summary["ppo"].items():
        held_out = entry["held_out"]
        assert held_out["n_prompts"] == QUICK.eval_prompts
        assert f"<tr data-held-out='{label}'>" in report
        assert f"PPO {label}: kid-judge (gold) win rate vs the base model {100 * held_out['gold_win_rate']:.1f}%" in result.stderr

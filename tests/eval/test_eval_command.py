"""`preftune eval` end to end on the tiny model, and human evaluation through the labeling store."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from preftune.cli import app

runner = CliRunner()

PROMPTS = [
    "Why is the sky blue?",
    "Explain magnets.",
    "What is the capital of France?",
    "Hello, how are you today?",
    "Tell me about the movie.",
    "Thank you!",
]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


def run(*args):
    return runner.invoke(app, ["eval", *[str(a) for a in args]])


def test_tiny_against_itself_wins_half_with_zero_kl(tmp_path, prompts_file):
    # `tiny` and `tiny:0` are the same weights loaded twice: the KL goes through teacher forcing.
    out = tmp_path / "eval"
    result = run("--model", "tiny", "--ref", "tiny:0", "--prompts", prompts_file, "--judge", "sentiment",
                 "--judge", "readability", "-n", "2", "--max-new-tokens", "12", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["n_prompts"] == len(PROMPTS)
    for name in ("sentiment", "readability"):
        entry = report["judges"][name]
        assert entry["win_rate"] == pytest.approx(0.5)
        assert entry["ties"] == 2 * len(PROMPTS)  # same weights, same seed: the same texts
        assert entry["ci95"][0] < 0.5 < entry["ci95"][1]
        assert entry["lc_win_rate"] == pytest.approx(0.5, abs=1e-6)
        assert entry["policy_mean"] == pytest.approx(entry["ref_mean"])
    assert abs(report["kl"]["mean"]) < 1e-4 and report["kl"]["n"] == 2 * len(PROMPTS)
    assert report["kl"]["ci95"][0] <= report["kl"]["mean"] <= report["kl"]["ci95"][1]
    assert report["length"]["policy_mean"] == report["length"]["ref_mean"] > 0
    assert "win rate" in result.output and "KL(pi||pi_ref)" in result.output
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 * len(PROMPTS) and all(g["policy"] == g["reference"] for g in generations)
    assert (out / "report.html").read_text().startswith("<!doctype html>")


def test_different_policy_reports_kl_gold_gap_and_escapes_html(tmp_path, prompts_file):
    out = tmp_path / "eval"
    result = run("--model", "tiny:1", "--ref", "tiny:0", "--prompts", prompts_file, "--judge", "readability",
                 "--gold", "sentiment", "--max-new-tokens", "10", "--out", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["kl"]["mean"] > 0.05 and report["kl"]["ci95"][1] > report["kl"]["ci95"][0]
    assert set(report["judges"]) == {"readability", "sentiment"} and report["gold"] == "sentiment"
    gap = report["gold_gap"]["readability"]
    assert gap["win_rate_gap"] == pytest.approx(
        report["judges"]["readability"]["win_rate"] - report["judges"]["sentiment"]["win_rate"]
    )
    assert json.loads(result.stdout[result.stdout.index("{") :])["n_prompts"] == len(PROMPTS)
    page = (out / "report.html").read_text()
    assert "<script" not in page
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    from html import escape

    assert escape(generations[0]["policy"]) in page  # model text is shown escaped


def test_bad_judge_and_missing_flags_are_one_line_errors(tmp_path, prompts_file):
    result = run(
        "--model",
        "tiny",
        "--ref",
        "tiny",
        "--prompts",
        prompts_file,
        "--judge",
        "vibes",
        "--out",
        tmp_path / "x",
    )
    assert result.exit_code == 2 and "unknown judge" in result.output and "Traceback" not in result.output
    result = run("--model", "tiny", "--judge", "sentiment", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--ref, --prompts required" in result.output
    result = run("--model", "tiny", "--ref", "tiny", "--prompts", prompts_file, "--judge", "sentiment",
                 "--gold", "sentiment", "--out", tmp_path / "x")  # fmt: skip
    assert result.exit_code == 2 and "must be held out" in result.output


def test_human_project_round_trip(tmp_path, prompts_file):
    from preftune.web.store import Store
    from preftune.web.votes import record_judge_vote

    db = f"sqlite:///{tmp_path / 'labels.db'}"
    out = tmp_path / "eval"
    result = run("--model", "tiny:1", "--ref", "tiny:0", "--prompts", prompts_file, "--judge", "sentiment",
                 "--max-new-tokens", "8", "--out", out, "--human", db, "--project", "eval-test")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--from-labels" in result.output
    store = Store(db)
    project = store.project_by_name("eval-test")
    items = store.items(project["id"])
    assert len(items) == len(PROMPTS)
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    sides = []
    for item, row in zip(items, generations, strict=True):
        side = item["external_id"].rsplit("=", 1)[1]
        assert item["response_" + side] == row["policy"] and item["prompt"] == row["prompt"]
        sides.append(side)
    # Two voters. Votes on the first 4 items: policy, policy, reference, tie (by each item's side);
    # item 5: both_bad from one voter; item 6: a skip only. Expected per-prompt means over counted
    # votes: 1, 1, 0, 0.5, 0.5 -> 3/5 over the 5 prompts with votes.
    judge_a, _ = store.create_user("judge-a", "judge", project["id"])
    judge_b, _ = store.create_user("judge-b", "judge", project["id"])
    other = {"a": "b", "b": "a"}
    wanted = [sides[0], sides[1], other[sides[2]], "tie"]
    for item, choice in zip(items[:4], wanted, strict=True):
        for voter in (judge_a, judge_b):
            record_judge_vote(store, project["id"], voter, item["id"], choice)
    record_judge_vote(store, project["id"], judge_a, items[4]["id"], "both_bad")
    record_judge_vote(store, project["id"], judge_a, items[5]["id"], "skip")
    store.close()
    labels_out = tmp_path / "human"
    result = runner.invoke(
        app, ["eval", "--from-labels", db, "--project", "eval-test", "--out", str(labels_out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((labels_out / "eval.json").read_text())
    human = report["judges"]["human"]
    assert human["win_rate"] == pytest.approx(0.6) and report["n_prompts"] == 5 and report["n_votes"] == 9
    assert (human["wins"], human["losses"], human["ties"]) == (4, 2, 3)
    assert human["votes"] == {"policy": 4, "reference": 2, "tie": 2, "both_bad": 1}
    assert (labels_out / "report.html").exists()


def test_from_labels_errors(tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    result = runner.invoke(app, ["eval", "--from-labels", db, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--project" in result.output
    result = runner.invoke(
        app, ["eval", "--from-labels", db, "--project", "nope", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "no project named 'nope'" in result.output

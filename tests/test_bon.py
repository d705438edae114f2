"""Best-of-n: the exact subset-average estimator, the kept sample, the summary, the command."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from typer.testing import CliRunner

from preftune.bon import best_of_n, expected_best_of_n, summarize
from preftune.cli import app
from preftune.data.schema import user_prompt
from preftune.losses.kl import best_of_n_kl


def brute_force(scores, n, gold=None):
    """Mean over every n-subset of the (gold) score of its best member (the earlier one on ties)."""
    gold = scores if gold is None else gold
    subsets = list(itertools.combinations(range(len(scores)), n))
    best = [max(subset, key=lambda i: (scores[i], -i)) for subset in subsets]
    return sum(gold[i] for i in best) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_expected_best_of_n_equals_the_mean_over_all_subsets(n):
    rng = random.Random(n)
    scores = [rng.uniform(-1, 1) for _ in range(7)]
    gold = [rng.gauss(0, 1) for _ in range(7)]
    assert expected_best_of_n(scores, n) == pytest.approx(brute_force(scores, n), abs=1e-12)
    assert expected_best_of_n(scores, n, gold) == pytest.approx(brute_force(scores, n, gold), abs=1e-12)


def test_expected_best_of_n_edges_and_ties():
    scores = [0.5, -1.0, 2.0, 0.5]
    assert expected_best_of_n(scores, 1) == pytest.approx(sum(scores) / 4)
    assert expected_best_of_n(scores, 4) == 2.0
    assert expected_best_of_n(scores, 2) == pytest.approx(brute_force(scores, 2))  # ties: 0.5 twice
    with pytest.raises(ValueError, match="1 <= n <= 4"):
        expected_best_of_n(scores, 5)
    with pytest.raises(ValueError, match="gold"):
        expected_best_of_n(scores, 2, [1.0])


@pytest.mark.parametrize("total", [1500, 4096])
def test_expected_best_of_n_past_float_binomials(total):
    """C(N, n) overflows a float past N ~ 1030; the estimator must still give the exact value
    (here against exact rational arithmetic) at the N of a Gao et al.-scale best-of-n run."""
    from fractions import Fraction

    rng = random.Random(total)
    scores = [rng.uniform(-1, 1) for _ in range(total)]
    order = sorted(range(total), key=lambda i: (scores[i], -i))
    for n in (1, 2, 37, total // 2, total - 1, total):
        exact = sum(Fraction(math.comb(r, n - 1)) * Fraction(scores[i]) for r, i in enumerate(order))
        assert expected_best_of_n(scores, n) == pytest.approx(
            float(exact / math.comb(total, n)), rel=1e-9, abs=1e-12
        )
    assert expected_best_of_n(scores, total) == max(scores)


def count_e(prompt: str, response: str) -> float:
    return float(response.count("e"))


def test_best_of_n_keeps_the_top_scored_sample_and_summarizes(tiny_tokenizer, tiny_model_factory):
    prompts = [user_prompt("Tell me about bees."), user_prompt("Why is the sky blue?"), user_prompt("Hi")]
    rows = best_of_n(tiny_model_factory(), tiny_tokenizer, prompts, count_e, 8, gold=lambda p, r: -len(r),
                     max_new_tokens=10, seed=1, batch_size=8)  # fmt: skip
    for row in rows:
        assert len(row.completions) == 8 and row.scores == [count_e("", c) for c in row.completions]
        assert row.scores[row.best] == max(row.scores)
        assert row.to_dict()["response"] == row.completions[row.best]
        assert row.gold_scores[row.best] == -len(row.completions[row.best])
    summary = summarize(rows)
    assert [e["n"] for e in summary["by_n"]] == [1, 2, 4, 8]
    assert [e["kl_bound"] for e in summary["by_n"]] == [best_of_n_kl(n) for n in (1, 2, 4, 8)]
    expected = [e["expected_best_score"] for e in summary["by_n"]]
    assert expected == sorted(expected)  # more samples never lower the expected best
    assert expected[0] == pytest.approx(summary["mean_score"]) and expected[-1] == pytest.approx(
        summary["mean_best_score"]
    )
    assert summary["by_n"][-1]["expected_gold_score"] == pytest.approx(summary["mean_gold_score"])


def test_bon_command_writes_best_and_prints_kl(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ["The film was", "I loved", "Worst movie"])
    )
    out = tmp_path / "bon.jsonl"
    result = CliRunner().invoke(app, ["bon", "--model", "tiny", "--reward", "judge:readability", "--prompts", str(prompts),
                                      "-n", "4", "-o", str(out), "--max-new-tokens", "8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["n"] == 4 and summary["prompts"] == 3
    assert summary["kl_bound"] == pytest.approx(math.log(4) - 3 / 4)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["The film was", "I loved", "Worst movie"]
    assert all(r["score"] == max(r["scores"]) and len(r["scores"]) == 4 for r in rows)
    bad = CliRunner().invoke(
        app, ["bon", "--model", "tiny", "--reward", "judge:nope", "--prompts", str(prompts), "-o", str(out)]
    )
    assert bad.exit_code == 2 and "unknown judge" in bad.output


def test_bon_command_takes_the_sampling_engine_and_precision(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The film was\nI loved\n")
    out = tmp_path / "bon.jsonl"
    common = ["bon", "--model", "tiny", "--reward", "judge:readability", "--prompts", str(prompts), "-n", "2",
              "-o", str(out), "--max-new-tokens", "4"]  # fmt: skip
    result = CliRunner().invoke(app, [*common, "--rollout-engine", "hf", "--rollout-precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 2
    bad = CliRunner().invoke(app, [*common, "--rollout-engine", "fast"])
    assert bad.exit_code == 2 and "--rollout-engine" in bad.output and "fast" in bad.output


def test_bon_command_reads_every_setting_from_a_config_file(tmp_path):
    # The flags are generated from BoNConfig, so settings the hand-written command once lacked
    # (--max-prompt-length) work, and --config files use the same names.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The film was\nI loved\n")
    out = tmp_path / "bon.jsonl"
    config = tmp_path / "bon.yaml"
    config.write_text(f"model: tiny\nreward: judge:readability\nprompts: {prompts}\nout: {out}\nn: 3\n"
                      "max_new_tokens: 4\nmax_prompt_length: 40\n")  # fmt: skip
    result = CliRunner().invoke(app, ["bon", "--config", str(config), "-n", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["n"] == 2  # the flag overrides the file
    assert all(len(json.loads(line)["scores"]) == 2 for line in out.read_text().splitlines())
    bad = CliRunner().invoke(app, ["bon", "--config", str(config), "-n", "0"])
    assert bad.exit_code == 2 and "--n:" in bad.output
    short = CliRunner().invoke(app, ["bon", "--config", str(config), "--max-prompt-length", "2"])
    assert short.exit_code == 2 and "--max-prompt-length: 2 tokens is shorter than the chat template" in short.output

"""The reward-model loop and `preftune rm` / `preftune score`: learning, the loss it logs, accumulation,
exact resume, NaN, LoRA, saved layout, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import RMConfig, resolve_config
from preftune.data.batching import collate_pairs
from preftune.data.formats import read_pairs
from preftune.data.tokenize import PairTokenizer
from preftune.models.reward_model import from_causal_lm, load_scalar_model
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train import reward as reward_loop
from preftune.train.reward import pair_rewards, score_pairs, train_reward_model

GOOD = ["The movie was wonderful, funny and warm.", "The acting was great and the story was good.",
        "A simple, friendly answer!", "The capital of France is Paris."]  # fmt: skip
BAD = ["The film was boring, too long and badly written.", "I did not like it at all.",
       "Magnets pull on some metals.", "Thank you!"]  # fmt: skip


def _write_pairs(path, margin=None):
    rows = []
    for i in range(8):
        row = {
            "prompt": f"Write a sentence from a movie review. ({i})",
            "chosen": GOOD[i % 4],
            "rejected": BAD[(i + 1) % 4],
        }
        if margin is not None:
            row["margin"] = margin
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return _write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


def config(data, out, **overrides):
    settings = dict(model="tiny", data=str(data), out=str(out), batch_size=8, lr=3e-3, max_steps=4, seed=0)
    settings.update(overrides)
    return resolve_config(RMConfig, None, settings)


def final_rewards(run, data) -> list[float]:
    model, tokenizer = load_scalar_model(run / "final")
    tokens = [PairTokenizer(tokenizer)(p) for p in read_pairs(data)[0]]
    with torch.no_grad():
        chosen, rejected = pair_rewards(model.eval(), collate_pairs(tokens, tokenizer.pad_token_id))
    return chosen.tolist() + rejected.tolist()


def test_tiny_reward_model_overfits_eight_pairs(pairs_file, tmp_path):
    out = train_reward_model(
        config(pairs_file, tmp_path / "run", eval_data=str(pairs_file), max_steps=25), show_progress=False
    )
    rows = read_metrics(out)
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[0]["accuracy"] < 1.0 and train_rows[-1]["accuracy"] == 1.0
    assert train_rows[-1]["loss"] < 0.1 * train_rows[0]["loss"]
    for name in (
        "loss",
        "accuracy",
        "margin",
        "mean_reward",
        "min_reward",
        "max_reward",
        "grad_norm",
        "learning_rate",
    ):
        assert name in train_rows[-1]
    final_eval = rows[-1]
    assert final_eval["eval/accuracy"] == 1.0
    assert final_eval["eval/min_reward"] <= final_eval["eval/mean_reward"] <= final_eval["eval/max_reward"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["eval/accuracy"] == 1.0
    # final/ loads as a reward model and ranks every training pair right.
    model, tokenizer = load_scalar_model(out / "final")
    scored = score_pairs(model, tokenizer, read_pairs(pairs_file)[0])
    assert scored["pairs"] == 8 and scored["accuracy"] == 1.0
    assert scored["mean_margin"] == pytest.approx(final_eval["eval/margin"], abs=1e-4)


def test_logged_loss_uses_the_data_margin_and_the_centering_term(tmp_path):
    data = _write_pairs(tmp_path / "margins.jsonl", margin=2.0)
    # The first logged loss is computed on the initial model: compare it with the closed form.
    model, tokenizer = from_causal_lm("tiny", seed=0)
    tokens = [PairTokenizer(tokenizer)(p) for p in read_pairs(data)[0]]
    with torch.no_grad():
        chosen, rejected = pair_rewards(model.eval(), collate_pairs(tokens, tokenizer.pad_token_id))
    plain = (-F.logsigmoid(chosen - rejected)).mean().item()
    with_margin = (-F.logsigmoid(chosen - rejected - 2.0)).mean().item()
    centered = with_margin + 0.5 * ((chosen + rejected) ** 2).mean().item()
    for out, settings, expected in [("plain", {"use_margin": False}, plain),
                                    ("margin", {}, with_margin),
                                    ("center", {"center_coef": 0.5}, centered)]:  # fmt: skip
        run = train_reward_model(config(data, tmp_path / out, max_steps=1, **settings), show_progress=False)
        assert read_metrics(run)[0]["loss"] == pytest.approx(expected, rel=1e-4), out
    assert with_margin > plain + 0.5


def test_batch_8_equals_batch_2_times_accumulation_4(pairs_file, tmp_path):
    # The padded layout: this checks accumulation arithmetic; packing a batch of 8 and of 2 differs
    # by attention-kernel rounding (~3e-5 per logit), which tests/models/test_fast_rewards.py bounds.
    big = train_reward_model(
        config(pairs_file, tmp_path / "big", batch_size=8, grad_accum=1, batching="padded"), show_progress=False
    )
    small = train_reward_model(
        config(pairs_file, tmp_path / "small", batch_size=2, grad_accum=4, batching="padded"), show_progress=False
    )
    big_rows, small_rows = read_metrics(big), read_metrics(small)
    for name in ("loss", "accuracy", "margin", "mean_reward", "min_reward", "max_reward"):
        # min/max over micro-batches are the batch's min/max, not a mean of them
        assert [r[name] for r in big_rows] == pytest.approx(
            [r[name] for r in small_rows], rel=1e-4, abs=1e-4
        ), name
    assert final_rewards(big, pairs_file) == pytest.approx(final_rewards(small, pairs_file), abs=1e-3)


def test_resume_after_sigterm_matches_uninterrupted_run(pairs_file, tmp_path, sigterm_at_clip):
    straight = train_reward_model(
        config(pairs_file, tmp_path / "straight", max_steps=8, batch_size=4), show_progress=False
    )
    restore_clip = sigterm_at_clip(5)  # SIGTERM arrives during step 5
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stopped:
        train_reward_model(config(pairs_file, interrupted, max_steps=8, batch_size=4), show_progress=False)
    assert stopped.value.code == 143
    assert [p.name for p in common.checkpoint_dirs(interrupted)] == ["step-5"]
    load_scalar_model(interrupted / "checkpoints" / "step-5")  # a checkpoint is a loadable reward model
    restore_clip()

    train_reward_model(
        config(pairs_file, interrupted, max_steps=8, batch_size=4, resume=True), show_progress=False
    )
    assert final_rewards(interrupted, pairs_file) == pytest.approx(
        final_rewards(straight, pairs_file), abs=1e-6
    )
    assert [r["step"] for r in read_metrics(interrupted)] == list(range(1, 9))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(pairs_file, tmp_path, nan_loss_at_call):
    nan_loss_at_call(reward_loop, "bradley_terry", 5)
    out = tmp_path / "nan"
    with pytest.raises(common.TrainingDiverged, match=r"step 5: loss is nan.*checkpoints/step-4"):
        train_reward_model(config(pairs_file, out, max_steps=8, save_every=2), show_progress=False)
    assert [p.name for p in common.checkpoint_dirs(out)] == ["step-2", "step-4"]
    load_scalar_model(out / "checkpoints" / "step-4")


def test_lora_reward_model_learns_and_saves_adapter_and_merged(pairs_file, tmp_path):
    out = train_reward_model(
        config(pairs_file, tmp_path / "lora", lora=True, lora_r=8, lora_alpha=16, lr=1e-2, max_steps=25,
               eval_data=str(pairs_file), merge=True),
        show_progress=False,
    )  # fmt: skip
    assert read_metrics(out)[-1]["eval/accuracy"] == 1.0
    assert json.loads((out / "final" / "preftune_scalar.json").read_text())["backbone"] == "lora"
    assert json.loads((out / "final" / "merged" / "preftune_scalar.json").read_text())["backbone"] == "full"
    lora_model, tokenizer = load_scalar_model(out / "final")
    merged_model, _ = load_scalar_model(out / "final" / "merged")
    pairs = read_pairs(pairs_file)[0]
    assert score_pairs(lora_model, tokenizer, pairs) == pytest.approx(
        score_pairs(merged_model, tokenizer, pairs), abs=1e-4
    )


# ----------------------------------------------------------------------------- the commands


def test_rm_and_score_commands(pairs_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    trained = runner.invoke(app, ["rm", "--model", "tiny", "--data", str(pairs_file), "--out", str(out),
                                  "--max-steps", "25", "--lr", "3e-3", "--batch-size", "8"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert f"run folder: {out}" in trained.stdout
    scored = runner.invoke(app, ["score", "--rm", str(out / "final"), "--data", str(pairs_file), "--json"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert set(result) == {"pairs", "accuracy", "mean_margin"}
    assert result["pairs"] == 8 and result["accuracy"] == 1.0 and result["mean_margin"] > 0
    model, tokenizer = load_scalar_model(out / "final")
    assert result == pytest.approx(score_pairs(model, tokenizer, read_pairs(pairs_file)[0]))


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_errors_are_one_line(pairs_file, tmp_path):
    runner = CliRunner()
    missing_rm = runner.invoke(app, ["score", "--rm", str(tmp_path / "nope"), "--data", str(pairs_file)])
    _one_line_error(missing_rm, "cannot load reward model", "no such folder")
    (tmp_path / "policy").mkdir()
    not_rm = runner.invoke(app, ["score", "--rm", str(tmp_path / "policy"), "--data", str(pairs_file)])
    _one_line_error(not_rm, "preftune_scalar.json", "preftune rm")
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{not json\n')
    bad = runner.invoke(app, ["rm", "--model", "tiny", "--data", str(bad_data), "--out", str(tmp_path / "x")])
    _one_line_error(bad, str(bad_data))
    no_data = runner.invoke(app, ["rm", "--model", "tiny", "--out", str(tmp_path / "y")])
    _one_line_error(no_data, "missing required setting(s): --data")
    top_without_lora = runner.invoke(app, ["rm", "--model", "tiny", "--data", str(pairs_file), "--out", str(tmp_path / "z"),
                                           "--lora-top-layers", "1"])  # fmt: skip
    _one_line_error(top_without_lora, "--lora-top-layers", "needs --lora")
    lengths = runner.invoke(app, ["score", "--rm", str(tmp_path / "policy"), "--data", str(pairs_file),
                                  "--max-length", "8", "--max-prompt-length", "8"])  # fmt: skip
    _one_line_error(lengths, "--max-prompt-length (8) must be below --max-length (8)")

"""The online-dpo loop: pairs ranked live, ties dropped, metrics under TRL's names, CLI and errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import ConfigError, OnlineDPOConfig, resolve_config
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics, read_samples
from preftune.train import common
from preftune.train import online_dpo as online_dpo_module
from preftune.train.online_dpo import pick_pairs, train_online_dpo

ONLINE_DPO_METRICS = [
    "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
    "logps/rejected", "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
    "objective/scores", "objective/scores_margin", "objective/ties", "val/contain_eos_token", "beta", "grad_norm",
]  # fmt: skip


def count_e(prompt: str, response: str) -> float:
    return float(response.count("e")) - 0.01 * len(response)


def config(prompts_file, out, **overrides) -> OnlineDPOConfig:
    settings = dict(model="tiny", prompts=str(prompts_file), reward="unused", out=str(out), iterations=3,
                    prompts_per_iteration=4, batch_size=2, max_new_tokens=8, lr=3e-3, scheduler="constant", seed=0)  # fmt: skip
    settings.update(overrides)
    return resolve_config(OnlineDPOConfig, None, settings)


def test_pick_pairs_takes_the_higher_score_and_drops_ties():
    """Prompt 0: 1.0 vs 3.0 -> row 1 chosen; prompt 1: 2.0 vs 2.0 -> not decided; prompt 2: 5.0 vs -1.0 -> row 4."""
    chosen, rejected, decided = pick_pairs(torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, -1.0]))
    assert chosen.tolist() == [1, 2, 4] and rejected.tolist() == [0, 3, 5] and decided.tolist() == [True, False, True]


def test_metrics_samples_and_outputs(prompts_file, tmp_path):
    out = train_online_dpo(config(prompts_file, tmp_path / "run", eval_split=0.25, eval_every=2), reward_fn=count_e,
                           show_progress=False)  # fmt: skip
    rows = [r for r in read_metrics(out) if "objective/scores" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert [n for n in ONLINE_DPO_METRICS if row.get(n) is None] == []
        assert row["objective/scores_margin"] > 0  # the chosen one is the better-scored one
    # The first pairs come from the reference itself: implicit rewards 0, KL 0.
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6) and rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["objective/kl"] != 0.0  # the policy moved
    evals = [r for r in read_metrics(out) if "eval/scores" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert {s["step"] for s in read_samples(out)} == {0, 2, 3}


def test_it_learns_the_synthetic_reward(prompts_file, tmp_path):
    """Ranking by the letter e, the mean score of the last 4 iterations beats the first 4."""
    out = train_online_dpo(config(prompts_file, tmp_path / "learn", iterations=16, prompts_per_iteration=8, batch_size=8,
                                  lr=3e-3, beta=0.5), reward_fn=count_e, show_progress=False)  # fmt: skip
    scores = [r["objective/scores"] for r in read_metrics(out) if "objective/scores" in r]
    assert sum(scores[-4:]) > 1.5 * sum(scores[:4]), scores


def test_all_ties_leave_the_weights_alone(prompts_file, tmp_path):
    out = train_online_dpo(config(prompts_file, tmp_path / "ties", iterations=2), reward_fn=lambda p, r: 1.0,
                           show_progress=False)  # fmt: skip
    rows = [r for r in read_metrics(out) if "objective/ties" in r]
    assert [r["objective/ties"] for r in rows] == [1.0, 1.0] and all("loss" not in r for r in rows)
    start = tiny_model(tiny_tokenizer(), seed=0).state_dict()
    for name, tensor in load_file(str(out / "final" / "model.safetensors")).items():
        assert torch.equal(tensor, start[name]), name


def test_bad_settings_and_the_cli(prompts_file, tmp_path):
    with pytest.raises(ConfigError, match="--grad-accum"):
        config(prompts_file, tmp_path / "x", grad_accum=2)
    with pytest.raises(ConfigError, match="--loss"):
        config(prompts_file, tmp_path / "x", loss="simpo")
    result = CliRunner().invoke(app, ["online-dpo", "--model", "tiny", "--reward", "judge:sentiment", "--prompts",
                                      str(prompts_file), "--out", str(tmp_path / "cli"), "--iterations", "1",
                                      "--prompts-per-iteration", "2", "--batch-size", "2", "--max-new-tokens", "6"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len([r for r in read_metrics(tmp_path / "cli") if "objective/scores" in r]) == 1


def test_resume_after_sigterm_matches_uninterrupted_run(prompts_file, tmp_path, sigterm_at_clip):
    settings = dict(iterations=4, eval_split=0.25, eval_every=2)
    straight = train_online_dpo(config(prompts_file, tmp_path / "straight", **settings), reward_fn=count_e,
                                show_progress=False)  # fmt: skip
    restore_clip = sigterm_at_clip(3)  # one step per iteration: SIGTERM arrives during iteration 3
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stopped:
        train_online_dpo(config(prompts_file, interrupted, **settings), reward_fn=count_e, show_progress=False)
    assert stopped.value.code == 143
    assert [p.name for p in common.checkpoint_dirs(interrupted)] == ["step-3"]
    restore_clip()
    train_online_dpo(config(prompts_file, interrupted, resume=True, **settings), reward_fn=count_e, show_progress=False)
    expected = load_file(str(straight / "final" / "model.safetensors"))
    for name, tensor in load_file(str(interrupted / "final" / "model.safetensors")).items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name

    def history(out):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in read_metrics(out)]

    assert [r["step"] for r in history(interrupted)] == [0, 1, 2, 3, 4, 4]
    for a, b in zip(history(straight), history(interrupted), strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7) for k in a), a["step"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(prompts_file, tmp_path, monkeypatch):
    real_loss = online_dpo_module.DPO_LOSSES["sigmoid"]
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        if loss.requires_grad:  # the training call (the metrics call runs without gradient)
            calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), metrics  # from iteration 3 on (2 micro-batches each)

    monkeypatch.setitem(online_dpo_module.DPO_LOSSES, "sigmoid", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(common.TrainingDiverged, match=r"step 3: loss is nan.*checkpoints/step-2"):
        train_online_dpo(config(prompts_file, out, iterations=4, save_every=1), reward_fn=count_e, show_progress=False)
    assert [p.name for p in common.checkpoint_dirs(out)] == ["step-1", "step-2"]

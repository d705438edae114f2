"""The grpo loop: metrics under TRL's names, every variant runs, it learns, resume, signals, NaN, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import ConfigError, GRPOConfig, resolve_config
from preftune.runlog import read_metrics, read_samples
from preftune.train import common
from preftune.train import grpo as grpo_module
from preftune.train.grpo import train_grpo

GRPO_METRICS = [
    "loss", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean",
    "clip_ratio/high_mean", "clip_ratio/region_mean", "completions/mean_length", "completions/min_length",
    "completions/max_length", "completions/clipped_ratio", "rewards/reward/mean", "rewards/reward/std",
    "grad_norm", "learning_rate", "objective/kl", "policy_loss",
]  # fmt: skip


def count_e(prompt: str, response: str) -> float:
    """Synthetic reward: the number of letter e's. Dense, so learning starts at once on a random model."""
    return float(response.count("e"))


def config(prompts_file, out, **overrides) -> GRPOConfig:
    settings = dict(model="tiny", prompts=str(prompts_file), reward="unused", out=str(out), iterations=3,
                    prompts_per_iteration=2, num_generations=4, batch_size=4, max_new_tokens=8, lr=3e-3,
                    scheduler="constant", seed=0, kl_coef=0.1)  # fmt: skip
    settings.update(overrides)
    return resolve_config(GRPOConfig, None, settings)


def iteration_rows(out) -> list[dict]:
    return [r for r in read_metrics(out) if "reward" in r]


def test_metrics_samples_and_outputs(prompts_file, tmp_path):
    out = train_grpo(config(prompts_file, tmp_path / "run", eval_split=0.25, eval_every=2),
                     reward_fn=count_e, show_progress=False)  # fmt: skip
    rows = iteration_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert [n for n in GRPO_METRICS if row.get(n) is None] == []
        assert 0 <= row["frac_reward_zero_std"] <= 1 and row["entropy"] > 0
    # The first rollout is sampled by the starting policy, which is the reference: its KL is exactly 0.
    # (The loss's "kl" is not: the second minibatch of iteration 1 is read after the first one's step.)
    assert rows[0]["objective/kl"] == 0.0 and rows[0]["kl"] > 0 and rows[2]["objective/kl"] > 0
    assert min(r["frac_reward_zero_std"] for r in rows) < 1  # a group's G samples differ (else no signal)
    assert rows[0]["policy/updates"] == 2  # 8 completions in minibatches of 4, one epoch
    evals = [r for r in read_metrics(out) if "eval/scores" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert evals[0]["eval/scores"] == evals[0]["eval/ref_scores"] and evals[0]["eval/kl"] == 0.0
    samples = read_samples(out)
    assert {s["step"] for s in samples} == {0, 2, 3} and len(samples) == 3 * 2  # 2 held-out prompts
    assert all(s["policy_score"] == count_e(s["prompt"], s["policy"]) for s in samples)
    assert (out / "final" / "model.safetensors").exists() and (out / "report.html").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(loss="dr_grpo"),
        dict(advantage="rloo"),
        dict(advantage="reinforce_pp", num_generations=1, prompts_per_iteration=4),
        dict(kl_in="reward", kl_estimator="k1"),
        dict(kl_coef=0.0, lora=True, lr=1e-2),
        dict(lora=True, lr=1e-2, eval_split=0.25),  # the reference is the adapter-off policy
        dict(ppo_epochs=2, batch_size=2, grad_accum=2),
    ],
    ids=["dr_grpo", "rloo", "reinforce_pp", "kl_in_reward", "no_kl_lora", "lora_kl_and_eval", "two_epochs_accum"],
)
def test_every_variant_runs(prompts_file, tmp_path, overrides):
    out = train_grpo(config(prompts_file, tmp_path / "run", iterations=2, **overrides), reward_fn=count_e,
                     show_progress=False)  # fmt: skip
    rows = iteration_rows(out)
    assert len(rows) == 2 and all(r["grad_norm"] > 0 for r in rows)
    assert ("objective/kl" in rows[0]) == (overrides.get("kl_coef", 0.1) > 0)


def test_it_learns_the_synthetic_reward(prompts_file, tmp_path):
    """Rewarding the letter e, the mean reward of the last 4 iterations beats the first 4."""
    out = train_grpo(config(prompts_file, tmp_path / "learn", iterations=16, prompts_per_iteration=4, batch_size=8,
                            lr=1e-2, kl_coef=0.0), reward_fn=count_e, show_progress=False)  # fmt: skip
    rewards = [r["reward"] for r in iteration_rows(out)]
    assert sum(rewards[-4:]) > 1.5 * sum(rewards[:4]), rewards


def test_resume_after_sigterm_matches_uninterrupted_run(prompts_file, tmp_path, sigterm_at_clip):
    settings = dict(iterations=4, eval_split=0.25, eval_every=2)
    straight = train_grpo(config(prompts_file, tmp_path / "straight", **settings), reward_fn=count_e, show_progress=False)
    restore_clip = sigterm_at_clip(2 * 2 + 1)  # 2 updates per iteration: SIGTERM arrives during iteration 3
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stopped:
        train_grpo(config(prompts_file, interrupted, **settings), reward_fn=count_e, show_progress=False)
    assert stopped.value.code == 143
    assert [p.name for p in common.checkpoint_dirs(interrupted)] == ["step-3"]
    restore_clip()
    train_grpo(config(prompts_file, interrupted, resume=True, **settings), reward_fn=count_e, show_progress=False)
    expected = load_file(str(straight / "final" / "model.safetensors"))
    resumed = load_file(str(interrupted / "final" / "model.safetensors"))
    for name, tensor in expected.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name

    def history(out):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in read_metrics(out)]

    assert [r["step"] for r in history(interrupted)] == [0, 1, 2, 3, 4, 4]
    for a, b in zip(history(straight), history(interrupted), strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7) for k in a), a["step"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(prompts_file, tmp_path, nan_loss_at_call):
    nan_loss_at_call(grpo_module, "group_policy_loss", 2 * 2 + 1)
    out = tmp_path / "nan"
    with pytest.raises(common.TrainingDiverged, match=r"step 3: loss is nan.*checkpoints/step-2"):
        train_grpo(config(prompts_file, out, iterations=4, save_every=1), reward_fn=count_e, show_progress=False)
    assert [p.name for p in common.checkpoint_dirs(out)] == ["step-1", "step-2"]


def test_bad_settings_are_one_line_errors(prompts_file, tmp_path):
    with pytest.raises(ConfigError, match="--num-generations: must be 2 or more for --advantage group"):
        config(prompts_file, tmp_path / "x", num_generations=1)
    with pytest.raises(ConfigError, match="--batch-size: --batch-size x --grad-accum = 3 must divide the 8"):
        config(prompts_file, tmp_path / "x", batch_size=3)
    with pytest.raises(ConfigError, match="--loss"):
        config(prompts_file, tmp_path / "x", loss="ppo")
    result = CliRunner().invoke(app, ["grpo", "--model", "tiny", "--reward", "judge:nope", "--prompts", str(prompts_file),
                                      "--out", str(tmp_path / "cli")])  # fmt: skip
    assert result.exit_code == 2 and "unknown judge" in result.output and "Traceback" not in result.output


def test_cli_on_the_arithmetic_task_with_verifiable_and_python_rewards(tmp_path, monkeypatch):
    """`--prompts task:arithmetic`, the task's held-out split as --eval-data, and a reward summing
    the exact-match check, the format check and the user's own function from a file in the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo_user_rewards.py").write_text("def brevity(prompt, response):\n    return -len(response) / 100\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "grpo", "--model", "tiny", "--prompts", "task:arithmetic:train:16", "--eval-data", "task:arithmetic:test:4",
        "--reward", "exact_match,format,python:grpo_user_rewards:brevity", "--out", str(out), "--iterations", "2",
        "--prompts-per-iteration", "2", "--num-generations", "2", "--batch-size", "4", "--max-new-tokens", "6",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = iteration_rows(out)
    assert len(rows) == 2
    for name in ("exact_match", "format", "python:grpo_user_rewards:brevity"):
        assert f"rewards/{name}/mean" in rows[0]
    assert rows[0]["reward"] == pytest.approx(sum(rows[0][f"rewards/{n}/mean"] for n in
                                                  ("exact_match", "format", "python:grpo_user_rewards:brevity")), abs=1e-6)  # fmt: skip
    final_eval = [r for r in read_metrics(out) if "eval/rewards/exact_match/mean" in r]
    assert [r["step"] for r in final_eval] == [0, 2]

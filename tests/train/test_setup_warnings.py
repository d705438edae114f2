"""finish_run, the end of every training loop, checks the run for reward hacking: it prints the
warnings of `eval.hacking.check_run` (or that there are none) and stores them in summary.json."""

from __future__ import annotations

import json

import pytest

from preftune.config import PPOConfig, resolve_config
from preftune.eval import hacking
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import RunLog
from preftune.train import setup


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = tiny_tokenizer()
    return tiny_model(tokenizer), tokenizer


def finished(tmp_path, model_and_tokenizer, rows: list[dict], target_kl: float = 0.0):
    settings = {"model": "tiny", "prompts": "prompts.txt", "reward": "judge:sentiment", "out": str(tmp_path),
                "target_kl": target_kl}  # fmt: skip
    config = resolve_config(PPOConfig, None, settings)
    log = RunLog(tmp_path, config)  # the trainers' own writer: config.yaml and metrics.jsonl
    for step, row in enumerate(rows, start=1):
        log.log(step, row)
    setup.finish_run(config, *model_and_tokenizer, tmp_path, {"train/loss": 0.1})
    return json.loads((tmp_path / "summary.json").read_text())


def test_a_run_that_hacks_ends_with_its_warnings_printed_and_in_the_summary(tmp_path, model_and_tokenizer, capfd):
    kl = [1.0 + 0.2 * i for i in range(17)] + [9.0, 10.0, 12.0]  # above 1.5 x target 5 for the last 3
    rows = [{"objective/kl": k, "policy/clipfrac_avg": 0.35, "objective/scores": 0.5} for k in kl]
    summary = finished(tmp_path, model_and_tokenizer, rows, target_kl=5.0)
    err = capfd.readouterr().err
    expected = hacking.check_run(tmp_path)
    assert [w.name for w in expected] == ["kl_runaway", "high_clip_fraction"]
    assert summary["warnings"] == [w.to_dict() for w in expected] and summary["metrics"] == {"train/loss": 0.1}
    block = err[err.index("reward-hacking checks: 2 warnings") :]
    assert block.rstrip("\n") == hacking.format_warnings(expected)  # last, as one block
    assert "warning [kl_runaway]: " + hacking.ABOUT["kl_runaway"][0] in block
    assert "step: 18, 19, 20" in block and "objective/kl: 9, 10, 12" in block  # the evidence
    assert "try: " + hacking.ABOUT["high_clip_fraction"][1] in block
    assert err.index("final model:") < err.index("reward-hacking checks")


def test_a_healthy_run_says_there_are_no_warnings(tmp_path, model_and_tokenizer, capfd):
    rows = [{"objective/kl": 0.5, "policy/clipfrac_avg": 0.1, "objective/scores": 0.1 * i} for i in range(20)]
    summary = finished(tmp_path, model_and_tokenizer, rows)
    err = capfd.readouterr().err
    assert summary["warnings"] == []
    assert err.rstrip("\n").endswith("reward-hacking checks: no warnings")


def test_a_failing_check_does_not_lose_the_finished_run(tmp_path, model_and_tokenizer, capfd, monkeypatch):
    def broken(run_dir):
        raise ValueError("detector bug")

    monkeypatch.setattr(hacking, "check_run", broken)
    summary = finished(tmp_path, model_and_tokenizer, [{"objective/kl": 0.5}])
    assert summary["warnings"] is None and (tmp_path / "final" / "config.json").exists()
    assert "reward-hacking checks: failed on" in capfd.readouterr().err

"""One run per folder: a used --out is refused, --overwrite starts over, --resume checks settings."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import ConfigError, DPOConfig, resolve_config
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train.dpo import train_dpo


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = [{"prompt": f"Explain thing {i}.", "chosen": f"A friendly answer {i}!", "rejected": "Boring."} for i in range(8)]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "reference_cache_dir", lambda: tmp_path / "refcache")


def dpo(pairs_file, out, **overrides):
    settings = dict(model="tiny", data=str(pairs_file), out=str(out), batch_size=4, lr=1e-3, max_steps=3, save_every=1)
    return train_dpo(resolve_config(DPOConfig, None, settings | overrides), show_progress=False)


def test_a_used_out_folder_is_refused_and_left_as_it_was(pairs_file, tmp_path):
    out = dpo(pairs_file, tmp_path / "run")
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"already holds a run .*--resume.*--overwrite"):
        dpo(pairs_file, out, lr=1e-2, max_steps=2)
    assert (out / "metrics.jsonl").read_text() == before


def test_overwrite_starts_a_clean_run(pairs_file, tmp_path):
    out = dpo(pairs_file, tmp_path / "run", max_steps=3)
    (out / "notes.txt").write_text("mine")  # not a run artefact: --overwrite leaves it
    dpo(pairs_file, out, max_steps=2, overwrite=True)
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]
    assert [p.name for p in common.checkpoint_dirs(out)] == ["step-1", "step-2"]
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_refuses_other_settings_and_says_what_differs(pairs_file, tmp_path):
    out = dpo(pairs_file, tmp_path / "run", max_steps=2)
    with pytest.raises(ConfigError, match=r"--lr 0\.01 \(saved: 0\.001\); --beta 0\.5 \(saved: 0\.1\)"):
        dpo(pairs_file, out, max_steps=4, lr=1e-2, beta=0.5, resume=True)
    dpo(pairs_file, out, max_steps=4, resume=True)  # running longer is a resume, not another run
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_and_out_that_is_a_file(pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="--resume: no checkpoint under"):
        dpo(pairs_file, tmp_path / "empty", resume=True)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="--out: .* is a file"):
        dpo(pairs_file, a_file)
    with pytest.raises(ConfigError, match="--overwrite: .*pick one"):
        dpo(pairs_file, tmp_path / "x", resume=True, overwrite=True)


def test_leftovers_of_a_killed_save_are_removed_on_the_next_start(pairs_file, tmp_path):
    out = dpo(pairs_file, tmp_path / "run", max_steps=2)
    leftover = out / "checkpoints" / ".step-3.tmp-abc123"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    dpo(pairs_file, out, max_steps=3, resume=True)
    assert not leftover.exists()
    assert [p.name for p in common.checkpoint_dirs(out)] == ["step-2", "step-3"]


def test_the_cli_gives_one_line_and_exit_2(pairs_file, tmp_path):
    args = ["dpo", "--model", "tiny", "--data", str(pairs_file), "--out", str(tmp_path / "run"), "--max-steps", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: --out: ")

"""Flat dataclass configs: defaults < YAML file < flags, with FILE:LINE errors and a round trip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from preftune.config import ConfigError, help_of, load_saved_config, resolve_config, save_config, setting


@dataclass
class ExampleConfig:
    model: str = setting(help="Policy to train.")
    beta: float = setting(0.1, help="KL strength.")
    steps: int = setting(10, help="Optimizer steps.")
    loss: Literal["sigmoid", "ipo"] = setting("sigmoid", help="Loss variant.")
    lora: bool = setting(False, help="Train a LoRA adapter.")
    eval_data: str | None = setting(None, help="Held-out pairs.")
    targets: list[str] = setting(["q_proj"], help="Modules.")


def test_precedence_defaults_file_flags(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("model: tiny\nbeta: 0.5\nsteps: 3\n")
    config = resolve_config(ExampleConfig, file, {"beta": 0.25, "steps": None})
    assert (config.model, config.beta, config.steps, config.loss) == ("tiny", 0.25, 3, "sigmoid")


def test_unknown_key_names_file_and_line(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("model: tiny\n\nbetta: 0.5\n")
    with pytest.raises(ConfigError) as err:
        resolve_config(ExampleConfig, file)
    assert str(err.value).startswith(f"{file}:3: unknown setting 'betta'")


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("model: tiny\nsteps: many\n", 2, "steps: must be int"),
        ("model: tiny\nsteps: 1.5\n", 2, "steps: must be a whole number"),
        ("model: tiny\nloss: dpo\n", 2, "loss: must be one of"),
        ("model: tiny\nlora: maybe\n", 2, "lora: must be true or false"),
        ("model: [1, 2\n", 2, "invalid YAML"),
        ("- a\n- b\n", 1, "a config file must be a mapping"),
    ],
)
def test_bad_values_name_the_line(tmp_path, text, line, reason):
    file = tmp_path / "c.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as err:
        resolve_config(ExampleConfig, file)
    assert str(err.value).startswith(f"{file}:{line}: {reason}")


def test_missing_required_and_bad_flag():
    with pytest.raises(ConfigError, match="missing required setting.*--model"):
        resolve_config(ExampleConfig, None, {"beta": 1.0})
    with pytest.raises(ConfigError, match="--steps: must be int"):
        resolve_config(ExampleConfig, None, {"model": "tiny", "steps": "x"})


def test_saved_config_reads_back_equal_and_carries_help(tmp_path):
    config = resolve_config(ExampleConfig, None, {"model": "tiny", "lora": True, "targets": "q_proj,v_proj"})
    assert config.targets == ["q_proj", "v_proj"]
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert "# KL strength." in path.read_text()
    assert load_saved_config(ExampleConfig, path) == config
    assert help_of(ExampleConfig, "beta") == "KL strength."

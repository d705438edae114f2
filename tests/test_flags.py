"""Every flag of every command, given a bad value, ends in one `error:` line and exit code 2.

The flags of sft, dpo, kto, rm and ppo are walked from their config dataclasses: a setting with a rule
(`setting(check=...)`) is fed the value its rule names as breaking it, every number is fed a word,
every yes/no setting a word that is neither, every choice a name that is not one. A free-text
setting has to be listed in FREE_TEXT_BAD_VALUES below, so a new one cannot go untested.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import (
    DPO_LOSS_NAMES,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RMConfig,
    SFTConfig,
    TrainConfig,
)
from preftune.losses.dpo import DPO_LOSSES
from preftune.losses.kl import KL_ESTIMATORS

COMMANDS = {"sft": SFTConfig, "dpo": DPOConfig, "kto": KTOConfig, "rm": RMConfig, "ppo": PPOConfig,
            "grpo": GRPOConfig, "online-dpo": OnlineDPOConfig}  # fmt: skip
PROMPT_COMMANDS = ("ppo", "grpo", "online-dpo")  # they read --prompts, not --data

# Settings whose value is free text (a path, a model name): a bad value for each, by setting name.
# {tmp} is the test's folder; {pairs} a real pairs file (a bad --data for ppo, which reads --prompts).
FREE_TEXT_BAD_VALUES = {
    "model": "{tmp}/no-such-model",
    "data": "{tmp}/no-such-data.jsonl",
    "out": "{pairs}",  # an existing file, not a folder
    "eval_data": "{tmp}/no-such-eval.jsonl",
    "prompts": "{tmp}/no-such-prompts.jsonl",
    "reward": "judge:no-such-judge",
    "ref_model": "{tmp}/no-such-reference",
}
PPO_UNUSED = {"data": "{pairs}", "format": "pairs", "max_steps": "3", "epochs": "2"}
ONLINE_DPO_UNUSED = PPO_UNUSED | {"grad_accum": "2"}


def bad_values(command: str, field: dataclasses.Field, annotation) -> list[str]:
    unused = ONLINE_DPO_UNUSED if command == "online-dpo" else PPO_UNUSED
    if command in PROMPT_COMMANDS and field.name in unused:
        return [unused[field.name]]
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = options[0] if typing.get_origin(annotation) in (typing.Union, type(int | None)) else annotation
    values = []
    check = field.metadata.get("check")
    if check is not None:
        values.append(str(check.breaking_value))
    if base in (int, float):
        values.append("many")
    elif base is bool:
        values.append("maybe")
    elif typing.get_origin(base) is typing.Literal:
        values.append("bogus")
    elif check is None:
        values.append(FREE_TEXT_BAD_VALUES[field.name])  # KeyError: add the new setting to the table
    return values


def cases():
    for command, config_class in COMMANDS.items():
        hints = typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            for value in bad_values(command, field, hints[field.name]):
                yield pytest.param(command, field.name, value, id=f"{command}--{field.name}={value}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    pairs = folder / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    prompts = folder / "prompts.txt"
    prompts.write_text("Say hi.\nSay bye.\n")
    return folder, pairs, prompts


@pytest.mark.parametrize("command, name, value", list(cases()))
def test_a_bad_value_is_one_line_and_exit_2(inputs, tmp_path, command, name, value):
    folder, pairs, prompts = inputs
    value = value.format(tmp=tmp_path, pairs=pairs)
    settings = {"model": "tiny", "out": str(tmp_path / "run"), "max_steps": "1"}
    if command == "ppo":
        settings = {"model": "tiny", "out": str(tmp_path / "run"), "prompts": str(prompts),
                    "reward": "judge:sentiment", "iterations": "1", "rollout_batch": "2", "batch_size": "2"}  # fmt: skip
    elif command in PROMPT_COMMANDS:
        settings = {"model": "tiny", "out": str(tmp_path / "run"), "prompts": str(prompts), "reward": "judge:sentiment",
                    "iterations": "1", "prompts_per_iteration": "2", "batch_size": "2"}  # fmt: skip
    else:
        settings["data"] = str(pairs)
    settings[name] = value
    args = [command] + [part for key, v in settings.items() for part in ("--" + key.replace("_", "-"), v)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, f"{args}\n{result.output}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    flag = "--" + name.replace("_", "-")
    assert flag in errors[0] or value in errors[0], errors[0]  # it names the flag, or the bad path


def test_every_default_follows_its_own_rule():
    for config_class in (TrainConfig, *COMMANDS.values()):
        for field in dataclasses.fields(config_class):
            check = field.metadata.get("check")
            if check is not None and field.default not in (dataclasses.MISSING, None):
                assert check.accepts(field.default), f"{config_class.__name__}.{field.name}"
                assert not check.accepts(check.breaking_value), f"{config_class.__name__}.{field.name}"


def test_choice_lists_match_what_the_code_implements():
    assert set(DPO_LOSS_NAMES) == set(DPO_LOSSES)
    kl_estimator = next(f for f in dataclasses.fields(PPOConfig) if f.name == "kl_estimator")
    assert all(kl_estimator.metadata["check"].accepts(name) for name in KL_ESTIMATORS)


@pytest.mark.parametrize("args", [
    ["dpo", "--no-such-flag", "1"], ["dpo", "--model"], ["data", "convert"], ["serve", "--port", "0"],
    ["generate", "--model", "tiny", "--prompts", "p", "-o", "o", "-n", "many"], ["no-such-command"],
])  # fmt: skip
def test_click_usage_errors_are_one_line_too(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_a_yes_no_setting_takes_yes_or_no(inputs, tmp_path):
    folder, pairs, _ = inputs
    base = ["dpo", "--model", "tiny", "--data", str(pairs), "--max-steps", "1", "--ref", "precompute"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a"), "--lora", "yes"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "final" / "adapter_config.json").exists()
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--lora=no"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "b" / "final" / "adapter_config.json").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_every_default_and_required_setting(command):
    raw = CliRunner().invoke(app, [command, "--help"]).stdout
    # One entry per option: "--flag[ / --no-flag] METAVAR  help [default: ...]".
    entries = {entry.split()[0]: " ".join(entry.split()) for entry in re.split(r"\n  (?=--)", raw)[1:]}
    for field in dataclasses.fields(COMMANDS[command]):
        entry = entries["--" + field.name.replace("_", "-")]
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            assert entry.endswith("[required]"), entry
        elif field.default is not None:
            assert entry.endswith(f"[default: {field.default}]"), entry
    if command == "ppo":
        assert 'JSONL of {"prompt": str | [messages]}' in entries["--prompts"]  # not eaten as markup


def other_command_cases():
    """Commands with hand-written options: every number gets a word, every bounded number a value
    past its bound, every --device a device that does not exist."""
    import typer.main

    root = typer.main.get_command(app)
    stack = [((), root)]
    while stack:
        path, command = stack.pop()
        if hasattr(command, "commands"):
            stack += [((*path, name), sub) for name, sub in command.commands.items()]
            continue
        for param in command.params:
            flag = max(param.opts, key=len)
            if param.param_type_name != "option" or getattr(param, "is_flag", False):
                continue
            if path[0] in COMMANDS:
                continue  # walked from the config dataclasses above
            default = param.default
            bad = []
            if isinstance(default, int | float) and not isinstance(default, bool):
                bad.append("many")
                if param.min is not None:
                    bad.append(str(param.min - 1))
                if param.max is not None:
                    bad.append(str(param.max + 1))
            if flag == "--device":
                bad.append("tpu")
            for value in bad:
                yield pytest.param(path, flag, value, id=f"{' '.join(path)}{flag}={value}")


@pytest.mark.parametrize("path, flag, value", list(other_command_cases()))
def test_a_bad_number_or_device_for_any_other_command_is_one_line(inputs, tmp_path, path, flag, value):
    folder, pairs, prompts = inputs
    # Required options get plausible values; the bad flag comes first, so it is the one parsed first.
    required = {"--model": "tiny", "--prompts": str(prompts), "--out": str(tmp_path / "out"), "--rm": str(tmp_path),
                "--data": str(pairs), "--reward": "judge:sentiment", "--db": f"sqlite:///{tmp_path / 'x.db'}",
                "--project": "p", "--judge": "sentiment", "--candidates": str(pairs)}  # fmt: skip
    import typer.main

    command = typer.main.get_command(app)
    for part in path:
        command = command.commands[part]
    args = [*path, flag, value]
    for param in command.params:
        name = max(param.opts, key=len)
        if param.required and param.param_type_name == "option" and name != flag:
            args += [name, required[name]]
        elif param.required:
            args.append(str(pairs))  # a positional FILE / RUN_DIR
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, f"{args}\n{result.output}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.strip().splitlines()[-1] == lines[0], result.stderr
    assert "Traceback" not in result.output

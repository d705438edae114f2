"""The CLI contract: JSON fields, exit codes, one-line errors, generate's output."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from preftune import __version__
from preftune.cli import app
from preftune.data.formats import read_pairs

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, starts_with):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {starts_with}"), result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]  # the error is the last word
    assert "Traceback" not in result.output


def test_help_and_version():
    assert run("--version").stdout.strip() == f"preftune {__version__}"
    help_text = run("--help").stdout
    for command in ("data", "generate", "sft", "dpo"):
        assert command in help_text


def test_inspect_real_sharegpt_file_with_token_checks(shared_data):
    result = run("data", "inspect", shared_data / "dpo_en_demo.json", "--model", "tiny", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["format"] == "sharegpt" and summary["rows_read"] == 300
    assert summary["pairs_kept"] + sum(summary["dropped"].values()) == 300
    assert summary["token_checks"] == {"pairs_checked": summary["pairs_kept"], "prompt_mismatch": 0, "eos_errors": 0, "bos_errors": 0}
    assert summary["tokens"]["chosen"]["p95"] >= summary["tokens"]["chosen"]["p50"] > 0


@pytest.mark.smollm2
def test_inspect_with_smollm2(shared_data):
    result = run("data", "inspect", shared_data / "dpo_en_demo.json", "--model", "smollm2-135m", "--json")
    summary = json.loads(result.stdout)
    assert summary["rows_read"] == 300
    assert {k: v for k, v in summary["token_checks"].items() if k != "pairs_checked"} == {
        "prompt_mismatch": 0, "eos_errors": 0, "bos_errors": 0}  # fmt: skip


def test_convert_round_trip(shared_data, tmp_path):
    out = tmp_path / "canonical.jsonl"
    assert run("data", "convert", shared_data / "dpo_en_demo.json", "-o", out).exit_code == 0
    original, _ = read_pairs(shared_data / "dpo_en_demo.json")
    converted, report = read_pairs(out)
    assert report.format == "messages"
    assert [(p.prompt, p.chosen, p.rejected) for p in converted] == [(p.prompt, p.chosen, p.rejected) for p in original]


@pytest.mark.parametrize(
    "content, error",
    [
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n', "BAD:2: malformed JSON"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 5, "rejected": "c"}\n',
         "BAD:2: field 'chosen' must be a string"),
        ('{"question": "a", "answer": "b"}\n', "BAD:1: unknown format; keys seen: ['answer', 'question']"),
        ('{"prompt": "a", "chosen": "same", "rejected": "same"}\n', "BAD: no usable pairs"),
    ],
)
def test_bad_files_give_one_line_and_exit_2(tmp_path, content, error):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert_one_line_error(run("data", "inspect", path), error.replace("BAD", str(path)))


def test_generate_writes_distinct_completions(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Why is the sky blue?\nExplain magnets.\n")
    out = tmp_path / "gen.jsonl"
    result = run("generate", "--model", "tiny", "--prompts", prompts, "-n", 2, "--max-new-tokens", 8, "-o", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Why is the sky blue?", "Explain magnets."]
    assert all(len(r["completions"]) == 2 and r["completions"][0] != r["completions"][1] for r in rows)
    assert "tokens/s" in result.stdout


def test_training_errors_are_one_line(tmp_path):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    base = ("dpo", "--data", pairs, "--out", tmp_path / "run")
    assert_one_line_error(run(*base, "--model", "tiny", "--loss", "simpo", "--ref", "precompute"), "--ref:")
    assert_one_line_error(run(*base, "--model", str(tmp_path / "nowhere")), "cannot load")
    assert_one_line_error(run(*base, "--model", "tiny", "--beta", "big"), "--beta: must be float")
    assert_one_line_error(run("dpo", "--data", pairs), "command line: missing required setting(s): --model, --out")
    config = tmp_path / "c.yaml"
    config.write_text("model: tiny\nbetta: 1\n")
    assert_one_line_error(run(*base, "--config", config), f"{config}:2: unknown setting 'betta'")


def test_short_flags_must_name_a_field():
    from preftune.cli.common import add_config_command
    from preftune.config import BoNConfig

    with pytest.raises(ValueError, match="short_flags name no field of BoNConfig: output"):
        add_config_command("bon-typo", BoNConfig, print, "never registered", short_flags={"output": "-o"})


def test_serve_on_a_busy_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("serve", "--port", port, "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert_one_line_error(result, f"--port {port}: cannot listen on 127.0.0.1:{port}")
    assert not (tmp_path / "x.db").exists()  # refused before anything was created


def test_transformers_progress_bars_are_silent(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from preftune.models.load import load_policy, save_model

    hf_logging.enable_progress_bar()  # as in a fresh process
    model, tokenizer = load_policy("tiny")
    save_model(model, tokenizer, tmp_path / "m")
    load_policy(str(tmp_path / "m"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err

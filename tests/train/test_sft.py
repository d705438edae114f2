"""The SFT loop: learns its responses, reads every example shape, masks the prompt."""

from __future__ import annotations

import json

import pytest

from preftune.config import SFTConfig, resolve_config
from preftune.data.formats import read_sft_examples
from preftune.data.schema import DataError
from preftune.runlog import read_metrics
from preftune.train.sft import train_sft


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_lowers_the_loss_on_its_responses(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": f"Explain the sky ({i}).", "response": "Sunlight bounces off air, and blue bounces most."} for i in range(8)
    ])  # fmt: skip
    config = resolve_config(SFTConfig, None, dict(model="tiny", data=str(data), out=str(tmp_path / "run"),
                                                  batch_size=4, lr=1e-2, max_steps=30, eval_data=str(data)))  # fmt: skip
    out = train_sft(config, show_progress=False)
    rows = read_metrics(out)
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
    assert "eval/loss" in rows[-1] and (out / "final" / "config.json").exists()


def test_sft_examples_from_every_shape(tmp_path):
    plain = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Hi", "response": "Hello!"}, {"prompt": "Hi", "response": " "}])
    examples, report = read_sft_examples(plain)
    assert [(p[0].content, r.content) for p, r in examples] == [("Hi", "Hello!")]
    assert report.dropped == {"empty response": 1}
    messages = write_jsonl(tmp_path / "b.jsonl", [{"messages": [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}])  # fmt: skip
    (prompt, response), = read_sft_examples(messages)[0]
    assert [m.role for m in prompt] == ["system", "user"] and response.content == "Hey"
    pairs = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Hi", "chosen": "Good", "rejected": "Bad"}])
    assert read_sft_examples(pairs)[0][0][1].content == "Good"
    bad = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "response": 3}])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'response' must be a string"):
        read_sft_examples(bad)

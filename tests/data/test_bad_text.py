"""Text no later stage can handle is refused by the reader, with FILE:LINE: lone UTF-16
surrogates, NaN / Infinity (JSON has neither), non-finite margins; and writes are atomic."""

from __future__ import annotations

import json

import pyarrow
import pyarrow.parquet
import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.data import schema
from preftune.data.formats import read_pairs, read_prompts, read_sft_examples
from preftune.data.schema import DataError, write_jsonl

GOOD = '{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}'


@pytest.mark.parametrize("line, where", [
    ('{"prompt": "a\\ud800b", "chosen": "x", "rejected": "y"}', "field 'prompt'"),
    ('{"prompt": "a", "chosen": "x\\udfff", "rejected": "y"}', "field 'chosen'"),
    ('{"prompt": [{"role": "user", "content": "\\ud83d"}], "chosen": "x", "rejected": "y"}', "field 'prompt'"),
    ('{"prompt": "a", "chosen": "x", "rejected": "y", "meta": {"\\udc00": 1}}', "a field name"),
])  # fmt: skip
def test_a_lone_surrogate_is_refused_with_file_and_line(tmp_path, line, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n{line}\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: unpaired UTF-16 surrogate in {where}"):
        read_pairs(path)
    as_list = tmp_path / "bad.json"
    as_list.write_text(f"[{GOOD}, {line}]")
    with pytest.raises(DataError, match=r"bad.json:2: row 2: unpaired UTF-16 surrogate"):
        read_pairs(as_list)


def test_a_whole_surrogate_pair_is_fine(tmp_path):
    path = tmp_path / "emoji.jsonl"
    path.write_text('{"prompt": "smile \\ud83d\\ude00", "chosen": "x", "rejected": "y"}\n')
    (pair,), _ = read_pairs(path)
    assert pair.prompt[0].content == "smile \U0001f600"


def test_every_reader_and_command_refuses_surrogates(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "a\\ud800", "response": "b", "chosen": "c", "rejected": "d"}\n')
    for read in (read_pairs, read_prompts, read_sft_examples):
        with pytest.raises(DataError, match="s.jsonl:1: unpaired"):
            read(path)
    out = tmp_path / "out.jsonl"
    for args in (["data", "inspect", str(path)], ["data", "convert", str(path), "-o", str(out)],
                 ["data", "inspect", str(path), "--model", "tiny"],
                 ["dpo", "--model", "tiny", "--data", str(path), "--out", str(tmp_path / "run")]):  # fmt: skip
        result = CliRunner().invoke(app, args)
        last = result.stderr.strip().splitlines()[-1]
        assert result.exit_code == 2 and last.startswith(f"error: {path}:1: unpaired"), (args, result.output)
    assert not out.exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(tmp_path, constant):
    path = tmp_path / "m.jsonl"
    path.write_text(f'{GOOD}\n{{"prompt": "a", "chosen": "b", "rejected": "c", "margin": {constant}}}\n')
    with pytest.raises(DataError, match=rf"m.jsonl:2: malformed JSON: {constant} is not valid JSON"):
        read_pairs(path)


def test_a_non_finite_margin_from_csv_or_parquet_is_refused(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("prompt,chosen,rejected,margin\na,b,c,1.0\nd,e,f,inf\n")
    with pytest.raises(DataError, match=r"m.csv:3: field 'margin' must be a finite number, got inf"):
        read_pairs(csv_path)
    parquet_path = tmp_path / "m.parquet"
    table = pyarrow.table({"prompt": ["a", "b"], "chosen": ["c", "d"], "rejected": ["e", "f"], "margin": [1.0, float("nan")]})
    pyarrow.parquet.write_table(table, parquet_path)
    with pytest.raises(DataError, match=r"m.parquet:2: row 2: field 'margin' must be a finite number, got nan"):
        read_pairs(parquet_path)


def test_sft_drops_an_empty_conversation_and_says_so(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": []}, {"messages": [{"role": "user", "content": "Hi"}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, report = read_sft_examples(path)
    assert len(examples) == 1 and report.rows_read == 3
    assert report.dropped == {"fewer than two messages (a prompt and a response)": 2}


def test_a_failed_write_leaves_no_half_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    pairs, _ = read_pairs(_file(tmp_path, [GOOD, GOOD.replace("Hi?", "Yo?")]))
    out = tmp_path / "out.jsonl"
    out.write_text("the previous output\n")
    calls = {"n": 0}
    real = schema.PreferencePair.to_dict

    def fail_on_second(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(self)

    monkeypatch.setattr(schema.PreferencePair, "to_dict", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        write_jsonl(pairs, out)
    assert out.read_text() == "the previous output\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")] == []


def test_convert_to_a_folder_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["data", "convert", str(_file(tmp_path, [GOOD])), "-o", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path}: is a folder; give the name of the JSONL file to write"


def _file(tmp_path, lines):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path

"""The unpaired (KTO) format: reading, detection, errors with FILE:LINE, pairs split into unpaired
rows, the round trip through canonical JSONL, tokenization and the mismatched pairs of a batch."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from preftune.data.batching import collate_unpaired, mismatched_partners
from preftune.data.formats import read_pairs
from preftune.data.schema import DataError, Message, PreferencePair, UnpairedExample, write_jsonl
from preftune.data.tokenize import PairTokenizer, TokenizedExample
from preftune.data.unpaired import read_unpaired, unpair

ROWS = [
    {"prompt": "Why is the sky blue?", "completion": "Light scatters off air.", "label": True},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     "completion": [{"role": "assistant", "content": "Go away."}], "label": False, "id": 7},
    {"prompt": "Capital of France?", "completion": {"role": "assistant", "content": "Paris."}, "label": True,
     "meta": {"rater": "ann"}},
]  # fmt: skip


def write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reads_text_and_message_rows(tmp_path):
    examples, report = read_unpaired(write(tmp_path, ROWS))
    assert report.format == "unpaired" and report.rows_read == 3 and report.pairs_kept == 3
    assert examples[0] == UnpairedExample([Message("user", "Why is the sky blue?")],
                                          Message("assistant", "Light scatters off air."), True, source="rows.jsonl")  # fmt: skip
    assert examples[1].prompt == [Message("system", "Be brief."), Message("user", "Hi")]
    assert (examples[1].completion.content, examples[1].label, examples[1].id) == ("Go away.", False, "7")
    assert examples[2].meta == {"rater": "ann"} and examples[2].completion == Message("assistant", "Paris.")


def test_canonical_jsonl_reads_back_to_the_same_examples(tmp_path):
    examples, _ = read_unpaired(write(tmp_path, ROWS))
    out = tmp_path / "canonical.jsonl"
    write_jsonl(examples, out)
    again, report = read_unpaired(out)
    assert again == examples and report.format == "unpaired"
    # TRL's KTO rows: plain text for a one-turn prompt, messages otherwise, a JSON boolean label.
    first, second = (json.loads(line) for line in out.read_text().splitlines()[:2])
    assert first["prompt"] == "Why is the sky blue?" and first["completion"] == "Light scatters off air." and first["label"] is True
    assert second["completion"] == [{"role": "assistant", "content": "Go away."}] and second["label"] is False


def test_pairs_become_a_desirable_and_an_undesirable_example(tmp_path):
    pairs = [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "id": "p1", "margin": 2.0},
             {"prompt": "Bye?", "chosen": "Goodbye!", "rejected": "Whatever."}]  # fmt: skip
    examples, report = read_unpaired(write(tmp_path, pairs))
    assert report.format.startswith("pairs") and report.pairs_kept == 4
    assert [(e.prompt[0].content, e.completion.content, e.label) for e in examples] == [
        ("Hi?", "Hello!", True), ("Hi?", "Go away.", False), ("Bye?", "Goodbye!", True), ("Bye?", "Whatever.", False)]  # fmt: skip
    assert examples[0].meta == {"pair_id": "p1", "margin": 2.0} and examples[2].meta == {}
    pair = PreferencePair([Message("user", "Q")], Message("assistant", "A"), Message("assistant", "B"))
    assert [e.label for e in unpair([pair])] == [True, False]


def test_a_pair_file_forced_as_unpaired_or_an_unknown_format_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unknown format 'thumbs'"):
        read_unpaired(write(tmp_path, ROWS), format="thumbs")
    with pytest.raises(DataError, match=r"rows.jsonl:1: unknown format; keys seen: \['chosen', 'prompt', 'rejected'\]"):
        read_unpaired(write(tmp_path, [{"prompt": "Hi", "chosen": "a", "rejected": "b"}]), format="unpaired")


def test_pair_readers_name_the_unpaired_format(tmp_path):
    with pytest.raises(DataError, match=r"rows.jsonl:1: rows are unpaired .*`preftune kto` reads them"):
        read_pairs(write(tmp_path, ROWS))


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "Hi", "completion": "Hello", "label": 1}, "field 'label' must be true or false, got int '1'"),
    ({"prompt": "Hi", "completion": "Hello", "label": "yes"}, "field 'label' must be true or false, got string 'yes'"),
    ({"prompt": "Hi", "completion": 3, "label": True}, "field 'completion' must be a list of messages, a message or a string, got int"),
    ({"prompt": "Hi", "completion": "Hello", "label": True, "id": 2.5}, "field 'id' must be a string or an integer, got float"),
])  # fmt: skip
def test_a_field_of_the_wrong_type_names_file_line_and_reason(tmp_path, row, reason):
    with pytest.raises(DataError, match=rf"rows.jsonl:2: {reason}"):
        read_unpaired(write(tmp_path, [ROWS[0], row]))


def test_unusable_rows_are_dropped_and_counted(tmp_path):
    rows = [ROWS[0],
            {"prompt": "Hi", "completion": "  ", "label": True},
            {"prompt": "Hi", "completion": "Hello"},
            {"prompt": "Hi", "completion": [{"role": "user", "content": "Hello"}], "label": False},
            {"prompt": "", "completion": "Hello", "label": False}]  # fmt: skip
    examples, report = read_unpaired(write(tmp_path, rows))
    assert len(examples) == 1
    assert report.dropped == {"empty completion": 1, "missing field 'label'": 1,
                              "completion is not from the assistant": 1, "empty prompt": 1}  # fmt: skip
    assert report.examples["missing field 'label'"] == 3


def test_no_usable_rows_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no usable pairs: read 1 rows"):
        read_unpaired(write(tmp_path, [{"prompt": "Hi", "completion": " ", "label": True}]))


def test_csv_labels_and_message_cells(tmp_path):
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "label"])
        writer.writerow(["Hi", "Hello!", "true"])
        writer.writerow(["Hi", json.dumps([{"role": "assistant", "content": "Go away."}]), "FALSE"])
    examples, _ = read_unpaired(path)
    assert [(e.completion.content, e.label) for e in examples] == [("Hello!", True), ("Go away.", False)]
    path.write_text("prompt,completion,label\nHi,Hello!,maybe\n")
    with pytest.raises(DataError, match="rows.csv:2: field 'label' must be true or false, got string 'maybe'"):
        read_unpaired(path)


# ---- tokens and batches --------------------------------------------------------------------------


def test_an_example_tokenizes_like_the_chosen_side_of_a_pair(tiny_tokenizer):
    tokenizer = PairTokenizer(tiny_tokenizer, max_length=64, max_prompt_length=32)
    pair = PreferencePair([Message("user", "Why is the sky blue?")], Message("assistant", "Light scatters."),
                          Message("assistant", "No."))  # fmt: skip
    tokens = tokenizer(pair)
    example = tokenizer.tokenize_unpaired(unpair([pair])[0])
    assert (example.prompt_ids, example.completion_ids, example.label) == (tokens.prompt_ids, tokens.chosen_ids, True)
    assert example.completion_ids[-1] == tiny_tokenizer.eos_token_id


def test_mismatched_partners_take_the_previous_example_with_another_prompt():
    assert mismatched_partners([[1], [2], [3], [4]]) == [3, 0, 1, 2]  # TRL: x_i with y_{i-1}
    # Examples 1 and 2 share a prompt (a pair split in two): 2 skips back to 0.
    assert mismatched_partners([[1], [2], [2], [3]]) == [3, 0, 0, 2]
    assert mismatched_partners([[5], [5]]) == [1, 0]  # no other prompt: the rotation stands


def test_collate_unpaired_builds_matched_and_mismatched_rows():
    examples = [TokenizedExample([1, 2], [10, 11, 0], True), TokenizedExample([3], [20, 0], False),
                TokenizedExample([4, 5, 6], [30, 31, 32, 33, 0], True)]  # fmt: skip
    batch = collate_unpaired(examples, pad_id=0, max_length=6)
    assert batch.labels.tolist() == [True, False, True]
    rows = batch.sequences
    assert rows.input_ids[1].tolist()[:3] == [3, 20, 0] and rows.completion_mask[1].tolist()[:3] == [0, 1, 1]
    kl = batch.kl_sequences
    # x_0 + y_2 (cut to 6 - 2 = 4 tokens), x_1 + y_0, x_2 + y_1.
    assert kl.input_ids.tolist()[0] == [1, 2, 30, 31, 32, 33]
    assert kl.attention_mask.sum(1).tolist() == [6, 4, 5]
    assert kl.completion_mask.tolist()[1][:4] == [0, 1, 1, 1] and kl.input_ids.tolist()[2][:5] == [4, 5, 6, 20, 0]
    packed = collate_unpaired(examples, pad_id=0, max_length=6, layout="fast")
    assert packed.kl_sequences.completion_lengths().tolist() == [4.0, 3.0, 2.0]
    assert torch.equal(packed.labels, batch.labels)
    with pytest.raises(ValueError, match="at least 2 examples"):
        collate_unpaired(examples[:1], pad_id=0, max_length=6)


def test_cli_converts_pairs_to_unpaired_rows_and_inspects_them(tmp_path):
    from typer.testing import CliRunner

    from preftune.cli import app

    pairs = write(tmp_path, [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}], name="pairs.jsonl")
    out = tmp_path / "thumbs.jsonl"
    result = CliRunner().invoke(app, ["data", "convert", str(pairs), "-o", str(out), "--unpaired"])
    assert result.exit_code == 0 and "wrote 2 unpaired examples" in result.output, result.output
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == [True, False]
    result = CliRunner().invoke(app, ["data", "inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["format"], summary["pairs_kept"], summary["desirable"], summary["undesirable"]) == ("unpaired", 2, 1, 1)
    result = CliRunner().invoke(app, ["dpo", "--model", "tiny", "--data", str(out), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "rows are unpaired" in result.stderr and "preftune kto" in result.stderr

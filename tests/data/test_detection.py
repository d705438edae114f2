"""Format detection names what it saw: HH transcripts with extra columns, columns of the wrong
type, and the splits of a saved `datasets` folder that were not read."""

from __future__ import annotations

import json

import pytest

from preftune.data.formats import read_pairs
from preftune.data.schema import DataError

TRANSCRIPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"


def write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_transcripts_with_an_extra_prompt_column_are_hh(tmp_path):
    row = {"prompt": TRANSCRIPT, "chosen": TRANSCRIPT + " Flour, water, yeast.", "rejected": TRANSCRIPT + " No."}
    (pair,), report = read_pairs(write(tmp_path, [row]))
    assert report.format == "hh"
    assert [m.to_dict() for m in pair.prompt] == [{"role": "user", "content": "How do I bake bread?"}]
    assert pair.chosen.content == "Flour, water, yeast." and pair.rejected.content == "No."


@pytest.mark.parametrize("row, reason", [
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string or a list of messages, got int"),
    ({"prompt": "a", "chosen": 3.5, "rejected": "b"}, "field 'chosen' must be a string, a message or a list of messages, got float"),
    ({"prompt": "a", "chosen": "b", "rejected": True}, "field 'rejected' must be a string, got bool"),
])  # fmt: skip
def test_a_column_of_the_wrong_type_is_named(tmp_path, row, reason):
    with pytest.raises(DataError, match=rf"rows.jsonl:1: {reason}"):
        read_pairs(write(tmp_path, [row]))


def test_the_splits_left_unread_are_reported_and_readable(tmp_path):
    datasets = pytest.importorskip("datasets")
    row = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}
    folder = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([row] * 3),
        "test": datasets.Dataset.from_list([row | {"prompt": "Test?"}] * 2),
    }).save_to_disk(str(folder))  # fmt: skip
    train, report = read_pairs(folder)
    assert len(train) == 3 and report.notes == [f"read split 'train'; not read: test (read one as {folder}:test)"]
    assert report.to_dict()["notes"] == report.notes
    test, report = read_pairs(f"{folder}:test")
    assert [p.prompt[0].content for p in test] == ["Test?", "Test?"]
    assert report.notes == [f"read split 'test'; not read: train (read one as {folder}:train)"]
    with pytest.raises(DataError, match=r"no split 'dev'; splits: \['test', 'train'\]"):
        read_pairs(f"{folder}:dev")

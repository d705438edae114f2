"""Readers: every format from every file type, drop reasons, one-line errors, and fuzzing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preftune.data.formats import FORMATS, read_pairs, read_prompts
from preftune.data.schema import DataError, Message, PreferencePair, write_jsonl

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

HH_PROMPT = (
    "\n\nHuman: How do I bake bread?\n\nAssistant: Start with flour, water, yeast and salt.\n\nHuman: Thanks!"
)


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str) -> Message:
    return Message("assistant", text)


# Each format: rows as a user's file would hold them, and the pairs they must become (source aside).
CASES = {
    "pairs": (
        [
            {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 1.5, "id": "q1"},
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven.", "system": "Be brief."},
        ],
        [
            PreferencePair([user("What is 2+2?")], assistant("4"), assistant("5"), margin=1.5, id="q1"),
            PreferencePair(
                [Message("system", "Be brief."), user("Name a colour.")],
                assistant("Blue."),
                assistant("Seven."),
            ),
        ],
    ),
    "messages": (
        [
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            },
            {  # no prompt: whole conversations sharing everything but the last turn
                "chosen": [
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                ],
                "rejected": [
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Lyon."},
                ],
            },
        ],
        [
            PreferencePair([user("Hi")], assistant("Hello!"), assistant("Go away.")),
            PreferencePair([user("Capital of France?")], assistant("Paris."), assistant("Lyon.")),
        ],
    ),
    "hh": (
        [
            {
                "chosen": HH_PROMPT + "\n\nAssistant: You're welcome.",
                "rejected": HH_PROMPT + "\n\nAssistant: Whatever.",
            },
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant:  Hm."},
        ],
        [
            PreferencePair(
                [
                    user("How do I bake bread?"),
                    assistant("Start with flour, water, yeast and salt."),
                    user("Thanks!"),
                ],
                assistant("You're welcome."),
                assistant("Whatever."),
            ),
            # only the one space the format puts after the colon is removed
            PreferencePair([user("Hi")], assistant("Hello!"), assistant(" Hm.")),
        ],
    ),
    "sharegpt": (
        [
            {
                "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}],
                "chosen": {"from": "gpt", "value": "Hello!"},
                "rejected": {"from": "gpt", "value": "What?"},
            },
            {
                "conversations": [
                    {"from": "human", "value": "Pick a number."},
                    {"from": "gpt", "value": "7"},
                    {"from": "human", "value": "Another?"},
                ],
                "chosen": {"from": "gpt", "value": "3"},
                "rejected": {"from": "gpt", "value": "7"},
            },
        ],
        [
            PreferencePair(
                [Message("system", "Be kind."), user("Hi")], assistant("Hello!"), assistant("What?")
            ),
            PreferencePair(
                [user("Pick a number."), assistant("7"), user("Another?")], assistant("3"), assistant("7")
            ),
        ],
    ),
}


def write_rows(rows: list, path: Path) -> Path:
    """Write `rows` in the file type named by `path`'s suffix (a suffix-less path: a datasets folder)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    # Arrow takes its columns from the first row only; a field a row lacks is null, as in real tables.
    table_rows = [{c: row.get(c) for c in columns} for row in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            for row in rows:  # message lists go into cells as JSON, the only way CSV can hold them
                cells = [row.get(c) for c in columns]
                writer.writerow(
                    ["" if v is None else v if isinstance(v, str | float) else json.dumps(v) for v in cells]
                )
    elif path.suffix == ".parquet":
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(table_rows), path)
    else:
        import datasets

        datasets.Dataset.from_list(table_rows).save_to_disk(str(path))
    return path


def with_source(pairs: list[PreferencePair], source: str) -> list[PreferencePair]:
    return [PreferencePair(p.prompt, p.chosen, p.rejected, p.margin, p.id, source, p.meta) for p in pairs]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ""])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_from_every_file_type_and_round_trips(tmp_path, fmt, suffix):
    rows, expected = CASES[fmt]
    path = write_rows(rows, tmp_path / f"{fmt}_data{suffix}")

    pairs, report = read_pairs(path)

    assert report.format == fmt
    assert (report.rows_read, report.pairs_kept, report.dropped) == (2, 2, {})
    assert pairs == with_source(expected, path.name)
    assert read_pairs(path, format=fmt)[0] == pairs
    canonical = tmp_path / "canonical.jsonl"
    write_jsonl(pairs, canonical)
    assert read_pairs(canonical)[0] == pairs


def test_datasets_dict_folder_takes_the_train_split(tmp_path):
    import datasets

    rows, expected = CASES["pairs"]
    other = [{"prompt": "x", "chosen": "y", "rejected": "z"}]
    splits = datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(other), "train": datasets.Dataset.from_list(rows)}
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    pairs, _ = read_pairs(tmp_path / "saved")
    assert [p.chosen for p in pairs] == [p.chosen for p in expected]


def test_shared_sharegpt_demo_file_reads_every_row_with_a_reason():
    path = SHARED_DATA / "dpo_en_demo.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (expected ../shared/data next to the repo root)")
    pairs, report = read_pairs(path)
    assert report.format == "sharegpt"
    assert report.rows_read == 300
    assert report.pairs_kept + sum(report.dropped.values()) == report.rows_read
    assert set(report.examples) == set(report.dropped)
    assert all(p.prompt[-1].role == "user" and p.chosen.role == p.rejected.role == "assistant" for p in pairs)
    assert any(p.prompt[0].role == "system" for p in pairs)
    assert any(len(p.prompt) >= 5 for p in pairs)  # multi-turn conversations keep their history
    assert report.to_dict() == {
        "path": str(path),
        "format": "sharegpt",
        "rows_read": 300,
        "pairs_kept": report.pairs_kept,
        "dropped": report.dropped,
    }


def test_hh_transcripts_drop_differing_prompts_and_empty_responses(tmp_path):
    rows = [
        {
            "chosen": HH_PROMPT + "\n\nAssistant: You're welcome.",
            "rejected": HH_PROMPT + "\n\nAssistant: Bye.",
        },
        {  # the earlier assistant turn differs, so the two prompts differ
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Knock knock.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant: No.",
        },
        {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant:   "},
    ]
    path = write_rows(rows, tmp_path / "hh.jsonl")

    pairs, report = read_pairs(path)

    assert report.format == "hh"
    assert report.dropped == {"prompts differ between chosen and rejected": 1, "empty response": 2}
    assert report.examples == {"prompts differ between chosen and rejected": 2, "empty response": 3}
    assert report.pairs_kept == 1
    assert pairs[0].prompt == [
        user("How do I bake bread?"),
        assistant("Start with flour, water, yeast and salt."),
        user("Thanks!"),
    ]
    assert (pairs[0].chosen, pairs[0].rejected) == (assistant("You're welcome."), assistant("Bye."))


def test_messages_extra_turns_join_the_prompt_only_when_identical(tmp_path):
    prompt = [{"role": "user", "content": "Plan a trip."}]
    rows = [
        {  # extra turns before the response, the same on both sides: they extend the prompt
            "prompt": prompt,
            "chosen": [
                {"role": "assistant", "content": "Where to?"},
                {"role": "user", "content": "Rome."},
                {"role": "assistant", "content": "Day 1: the Forum."},
            ],
            "rejected": [
                {"role": "assistant", "content": "Where to?"},
                {"role": "user", "content": "Rome."},
                {"role": "assistant", "content": "No."},
            ],
        },
        {  # UltraFeedback shape: each side repeats the prompt; it must not appear twice
            "prompt": "Say hi.",
            "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
            "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}],
        },
        {
            "prompt": prompt,
            "chosen": {"from": "gpt", "value": "Go north."},
            "rejected": {"role": "assistant", "content": "Stay."},
        },
        {
            "prompt": prompt,
            "chosen": [
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "B"},
            ],
            "rejected": [
                {"role": "assistant", "content": "C"},
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "D"},
            ],
        },
        {
            "prompt": prompt,
            "chosen": [{"role": "user", "content": "Hm"}],
            "rejected": [{"role": "user", "content": "Ok"}],
        },
        {
            "prompt": prompt,
            "chosen": [{"role": "tool", "content": "42"}],
            "rejected": [{"role": "assistant", "content": "Ok"}],
        },
    ]
    pairs, report = read_pairs(write_rows(rows, tmp_path / "m.jsonl"))

    assert [p.prompt for p in pairs] == [
        [user("Plan a trip."), assistant("Where to?"), user("Rome.")],
        [user("Say hi.")],
        [user("Plan a trip.")],
    ]
    assert [(p.chosen.content, p.rejected.content) for p in pairs] == [
        ("Day 1: the Forum.", "No."),
        ("Hi!", "No."),
        ("Go north.", "Stay."),
    ]
    assert report.dropped == {
        "prompts differ between chosen and rejected": 1,
        "response is not from the assistant": 1,
        "unknown message role 'tool'": 1,
    }


def test_every_drop_reason_is_counted_with_its_first_line(tmp_path):
    rows = [
        {"prompt": "Q", "chosen": "A", "rejected": "B"},
        {"prompt": "Q", "chosen": "   ", "rejected": "B"},
        {"prompt": " ", "chosen": "A", "rejected": "B"},
        {"prompt": "Q", "chosen": "same", "rejected": "same"},
        {"prompt": "Q", "chosen": "A"},
        {"prompt": "Q", "chosen": "A", "rejected": None},
        {"prompt": "Q", "chosen": "A", "rejected": "B", "margin": 0.25},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join(json.dumps(r) for r in rows[:3]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[3:])
    )

    pairs, report = read_pairs(path)

    # blank line 4 is skipped, so rows 4.. sit one line lower in the file
    assert report.dropped == {
        "empty response": 1,
        "empty prompt": 1,
        "chosen == rejected": 1,
        "missing field 'rejected'": 2,
    }
    assert report.examples == {
        "empty response": 2,
        "empty prompt": 3,
        "chosen == rejected": 5,
        "missing field 'rejected'": 6,
    }
    assert (report.rows_read, report.pairs_kept) == (7, 2)
    assert [p.margin for p in pairs] == [None, 0.25]
    assert all(p.source == "p.jsonl" for p in pairs)


def test_autodetect_skips_a_first_row_that_matches_no_format(tmp_path):
    rows = [{"prompt": "Q", "chosen": "A"}, {"prompt": "Q", "chosen": "A", "rejected": "B"}]
    pairs, report = read_pairs(write_rows(rows, tmp_path / "p.jsonl"))
    assert report.format == "pairs" and len(pairs) == 1
    assert report.dropped == {"missing field 'rejected'": 1}


def test_prompt_ending_in_an_assistant_turn_is_dropped(tmp_path):
    rows = [
        {
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
            "chosen": {"from": "gpt", "value": "A"},
            "rejected": {"from": "gpt", "value": "B"},
        },
        {
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "A"},
            "rejected": {"from": "gpt", "value": "B"},
        },
    ]
    _, report = read_pairs(write_rows(rows, tmp_path / "s.jsonl"))
    assert report.dropped == {"last prompt turn is not from the user": 1}


# ---- errors: one line, FILE:LINE: reason ------------------------------------------------------------


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        read_pairs(path, **kwargs)
    return str(caught.value)


def test_malformed_json_line_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n\n{"prompt": "Q", "chosen": \n')
    assert error_of(path).startswith(f"{path}:3: malformed JSON: Expecting value")


def test_malformed_json_file_names_its_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "Q",\n   "chosen" "A"}\n]')
    assert error_of(path).startswith(f"{path}:3: malformed JSON: Expecting ':' delimiter")


def test_wrong_field_type_is_an_error_not_a_drop(tmp_path):
    path = write_rows(
        [{"prompt": "Q", "chosen": "A", "rejected": "B"}, {"prompt": "Q", "chosen": 3, "rejected": "B"}],
        tmp_path / "p.jsonl",
    )
    assert error_of(path) == f"{path}:2: field 'chosen' must be a string, got int"


def test_json_list_errors_name_the_row(tmp_path):
    path = write_rows(
        [{"prompt": "Q", "chosen": "A", "rejected": "B"}, {"prompt": "Q", "chosen": "A", "rejected": 1.5}],
        tmp_path / "p.json",
    )
    assert error_of(path) == f"{path}:2: row 2: field 'rejected' must be a string, got float"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "Q", "chosen": "A", "rejected": "B", "margin": "high"},
            "field 'margin' must be a number, got string",
        ),
        (
            {"prompt": "Q", "chosen": "A", "rejected": "B", "id": [1]},
            "field 'id' must be a string or an integer, got list",
        ),
        (
            {"prompt": "Q", "chosen": "A", "rejected": "B", "system": 1},
            "field 'system' must be a string, got int",
        ),
        (
            {"prompt": [1], "chosen": "A", "rejected": "B"},
            "field 'prompt' item 1 must be a message object, got int",
        ),
        (
            {"prompt": [{"role": "user"}], "chosen": "A", "rejected": "B"},
            "field 'prompt' item 1 needs a string 'content' (or 'value'), got null",
        ),
    ],
)
def test_other_wrong_types_are_errors(tmp_path, row, message):
    path = write_rows([row], tmp_path / "p.jsonl")
    assert error_of(path) == f"{path}:1: {message}"


def test_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n["Q", "A", "B"]\n')
    assert error_of(path) == f"{path}:2: expected a JSON object per row, got list"


def test_zero_usable_pairs(tmp_path):
    path = write_rows(
        [{"prompt": "Q", "chosen": "", "rejected": "B"}, {"prompt": "Q", "chosen": "A", "rejected": "A"}],
        tmp_path / "p.jsonl",
    )
    assert error_of(path) == (
        f'{path}: no usable pairs: read 2 rows, dropped: {{"empty response": 1, "chosen == rejected": 1}}'
    )


def test_unknown_format_lists_the_keys_it_saw(tmp_path):
    path = write_rows(
        [{"question": "Q", "answer": "A"}, {"question": "Q2", "answer": "B"}], tmp_path / "p.jsonl"
    )
    message = error_of(path)
    assert message.startswith(
        f"{path}:1: unknown format; keys seen: ['answer', 'question']; expected one of pairs"
    )


def test_a_field_that_no_row_has_is_an_unknown_format(tmp_path):
    path = write_rows(CASES["pairs"][0], tmp_path / "p.jsonl")
    message = error_of(path, format="sharegpt")
    assert message.startswith(
        f"{path}:1: unknown format; keys seen: ['chosen', 'id', 'margin', 'prompt', 'rejected']"
    )
    assert "format 'sharegpt' needs field 'conversations'" in message


def test_unknown_format_name(tmp_path):
    path = write_rows(CASES["pairs"][0], tmp_path / "p.jsonl")
    assert (
        error_of(path, format="alpaca")
        == f"{path}: unknown format 'alpaca'; expected one of pairs, messages, hh, sharegpt"
    )


def test_missing_paths_and_unsupported_files(tmp_path):
    assert error_of(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file"
    assert (
        error_of("data/missing.jsonl") == "data/missing.jsonl: no such file"
    )  # looks like org/name, but a file
    (tmp_path / "x.txt").write_text("hi")
    assert error_of(tmp_path / "x.txt").startswith(f"{tmp_path / 'x.txt'}: unsupported file type '.txt'")
    (tmp_path / "folder").mkdir()
    assert "not one saved by datasets" in error_of(tmp_path / "folder")


def test_csv_errors_and_bytes(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,chosen,rejected\nQ,A,B\n"Q\nwith a newline",A,B,extra\n')
    assert error_of(path) == f"{path}:3: malformed CSV: 4 cells, header has 3"
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "Q", "chosen": "A", "rejected": "B"}\n{"prompt": "\xff"}\n')
    assert error_of(path).startswith(f"{path}:2: not valid UTF-8")


def test_json_lines_saved_as_json_read_as_lines(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("\n".join(json.dumps(r) for r in CASES["pairs"][0]) + "\n")
    pairs, report = read_pairs(path)
    assert report.pairs_kept == 2 and pairs == with_source(CASES["pairs"][1], "p.json")


# ---- prompts for generation ----------------------------------------------------------------------------


def test_read_prompts_from_jsonl_and_text(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        json.dumps({"prompt": "Hello"})
        + "\n\n"
        + json.dumps(
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
        )
        + "\n"
    )
    assert read_prompts(path) == [[user("Hello")], [Message("system", "Be brief."), user("Hi")]]
    text = tmp_path / "prompts.txt"
    text.write_text("First prompt\n\n  \nSecond prompt\n")
    assert read_prompts(text) == [[user("First prompt")], [user("Second prompt")]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "Hi"}\n{"text": "Hi"}\n', ":2: missing field 'prompt'"),
        ('{"prompt": 5}\n', ":1: field 'prompt' must be a list of messages, a message or a string, got int"),
        (
            '{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
            ":1: last prompt turn is not from the user",
        ),
        ("\n\n", ": no prompts"),
        ('{"prompt": "Hi"\n', ":1: malformed JSON"),
    ],
)
def test_read_prompts_errors(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        read_prompts(path)
    assert str(caught.value).startswith(f"{path}{message}")


# ---- fuzzing: nothing but DataError escapes -------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "prompt",
        "chosen",
        "rejected",
        "conversations",
        "from",
        "value",
        "role",
        "content",
        "system",
        "margin",
        "id",
    ]
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["human", "gpt", "user", "assistant", "\n\nHuman: hi\n\nAssistant: yo", ""]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(KEYS | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=20,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def returns_or_raises_data_error(path: Path) -> None:
    try:
        pairs, report = read_pairs(path)
    except DataError:
        return
    assert report.pairs_kept == len(pairs) > 0
    assert report.pairs_kept + sum(report.dropped.values()) == report.rows_read


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_data_error(tmp_path, data):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    returns_or_raises_data_error(path)


@FUZZ
@given(rows=st.lists(JSON_VALUES, max_size=5), as_list=st.booleans())
def test_arbitrary_json_rows_raise_only_data_error(tmp_path, rows, as_list):
    path = tmp_path / ("fuzz.json" if as_list else "fuzz.jsonl")
    path.write_text(json.dumps(rows) if as_list else "".join(json.dumps(r) + "\n" for r in rows))
    returns_or_raises_data_error(path)


@FUZZ
@given(rows=st.lists(st.dictionaries(KEYS, JSON_VALUES, max_size=5), min_size=1, max_size=5))
def test_arbitrary_json_objects_raise_only_data_error(tmp_path, rows):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    returns_or_raises_data_error(path)

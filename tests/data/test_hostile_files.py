"""1,200 generated hostile files through every reader and `data convert`: no tracebacks, no silent drops.

Each file is built from a seeded random mix of good rows and hostile ones (wrong types, missing or
null fields, lone surrogates, NaN, huge numbers, deep nesting, broken JSON, stray bytes, BOMs, CRLF,
HH transcripts that do not split, empty conversations...) in each file type the readers take. For
every file, each reader either returns, with every row counted as kept or dropped (by reason), or
raises one `DataError` line naming the file; `data convert` exits 0 with a file that reads back to
the same pairs, or 2 with one `error:` line. Anything else (another exception, a traceback, rows
that vanish) fails the test and names the seed that made the file.
"""

from __future__ import annotations

import json
import random

import pyarrow
import pyarrow.parquet
import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.data.formats import read_pairs, read_prompts, read_sft_examples
from preftune.data.schema import DataError

FILES = 1200
HH = "\n\nHuman: {q}\n\nAssistant: {a}"

GOOD_ROWS = [
    lambda r: {"prompt": f"Q{r.random()}", "chosen": "Yes.", "rejected": "No."},
    lambda r: {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
               "rejected": [{"role": "assistant", "content": "Go"}]},  # fmt: skip
    lambda r: {"chosen": HH.format(q="Bake?", a="Flour."), "rejected": HH.format(q="Bake?", a="No.")},
    lambda r: {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello"},
               "rejected": {"from": "gpt", "value": "Go"}},  # fmt: skip
    lambda r: {"prompt": "Hi", "response": "Hello", "chosen": "a", "rejected": "b"},
    lambda r: {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
]

HOSTILE_VALUES = [
    None, 0, -1, 1.5, True, "", " ", "\x00", "a\ud800b", "\udfff", float("nan"), float("inf"), 10**400, [], {}, [[]],
    [None], [{"role": "user"}], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 5}],
    {"from": "gpt"}, {"value": None}, "x" * 5000, "\n\nHuman:", "\n\nAssistant:", HH.format(q="a", a=""),
    "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "\u202e\u0000\ufeff", [[[[[]]]]], {"a": {"b": {"c": []}}},
]  # fmt: skip
KEYS = ["prompt", "chosen", "rejected", "margin", "id", "messages", "response", "conversations", "meta", "system", "source"]


def hostile_row(rng: random.Random):
    kind = rng.random()
    if kind < 0.35:
        return rng.choice(GOOD_ROWS)(rng)
    if kind < 0.45:  # not an object at all
        return rng.choice([[1, 2], "text", 42, None, True, [{"prompt": "a"}]])
    row = dict(rng.choice(GOOD_ROWS)(rng))
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        key = rng.choice(KEYS)
        if action < 0.6:
            row[key] = rng.choice(HOSTILE_VALUES)
        elif action < 0.85:
            row.pop(rng.choice(list(row) or ["prompt"]), None)
        else:
            row[f"extra{rng.randint(0, 9)}"] = rng.choice(HOSTILE_VALUES)
    return row


def dumps(value) -> str:
    # allow_nan: the files may hold NaN/Infinity, which Python writes and the readers must refuse.
    return json.dumps(value, allow_nan=True, ensure_ascii=True)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def write_file(tmp_path, seed: int):
    rng = random.Random(seed)
    rows = [hostile_row(rng) for _ in range(rng.randint(0, 12))]
    kind = rng.choice(["jsonl", "jsonl", "jsonl", "json", "json", "csv", "parquet"])
    path = tmp_path / f"hostile-{seed}.{kind}"
    if kind == "jsonl":
        lines = [dumps(r) for r in rows]
        for _ in range(rng.randint(0, 2)):  # text damage on top of the rows
            damage = rng.choice(["", "   ", "{", '{"prompt": "a",', deep(rng.choice([5, 50000])), "\ufeff{}", "NaN", "1e999999"])
            lines.insert(rng.randint(0, len(lines)), damage)
        data = ("\r\n" if rng.random() < 0.2 else "\n").join(lines).encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:
            data = data[: rng.randint(0, len(data))]  # cut mid-row
        if rng.random() < 0.05:
            data += b"\xff\xfe\x80"  # not UTF-8
        path.write_bytes(data)
    elif kind == "json":
        shape = rng.random()
        value = rows if shape < 0.6 else {"data": rows} if shape < 0.8 else rng.choice([{}, 5, "x", {"train": 3}])
        text = dumps(value)
        if rng.random() < 0.1:
            text = text[: rng.randint(0, len(text))]
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    elif kind == "csv":
        header = rng.sample(KEYS, rng.randint(1, 5))
        lines = [",".join(header)]
        for row in rows:
            cells = [row.get(k) if isinstance(row, dict) else row for k in header]
            lines.append(",".join(_csv_cell(c) for c in cells[: rng.randint(0, len(cells) + 1)]))
        if rng.random() < 0.1:
            lines.append('"unclosed, quote')
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    else:
        table_rows = [r for r in rows if isinstance(r, dict)] or [{"prompt": "a"}]
        columns = {k: [_parquet_cell(r.get(k)) for r in table_rows] for r in table_rows for k in r if k in KEYS}
        try:
            pyarrow.parquet.write_table(pyarrow.table(columns or {"x": [1]}), path)
        except (pyarrow.ArrowException, ValueError, TypeError, UnicodeEncodeError):
            path.write_bytes(b"PAR1 not really parquet")  # a corrupt parquet file is hostile too
    return path


def _csv_cell(value) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _parquet_cell(value):
    return value if isinstance(value, str | float) and not isinstance(value, bool) else dumps(value)


def check_reader(read, path, seed):
    try:
        result = read(path)
    except DataError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path)), (seed, read.__name__, message)
        return None
    except Exception as error:  # noqa: BLE001 - the point: nothing else may escape
        pytest.fail(f"seed {seed}: {read.__name__}({path.name}) raised {type(error).__name__}: {error}")
    if read is read_prompts:
        assert result, (seed, "read_prompts returned no prompts without an error")
        return result
    items, report = result
    # No silent drop: every row read is kept or counted under a reason.
    assert report.rows_read == report.pairs_kept + sum(report.dropped.values()), (seed, read.__name__, report)
    assert len(items) == report.pairs_kept, (seed, read.__name__)
    return items


def content(pairs):
    return [(p.prompt, p.chosen, p.rejected, p.margin, p.id) for p in pairs]


@pytest.mark.parametrize("block", range(4))
def test_hostile_files_never_crash_a_reader_or_convert(tmp_path, block):
    runner = CliRunner()
    outcomes = {"read": 0, "refused": 0}
    for seed in range(block * FILES // 4, (block + 1) * FILES // 4):
        path = write_file(tmp_path, seed)
        pairs = check_reader(read_pairs, path, seed)
        check_reader(read_sft_examples, path, seed)
        check_reader(read_prompts, path, seed)
        out = tmp_path / f"converted-{seed}.jsonl"
        result = runner.invoke(app, ["data", "convert", str(path), "-o", str(out)])
        assert result.exception is None or isinstance(result.exception, SystemExit), (seed, result.output)
        assert "Traceback" not in result.output, (seed, result.output)
        if pairs is None:
            assert result.exit_code == 2, (seed, result.output)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), (seed, result.stderr)
            assert not out.exists(), seed
            outcomes["refused"] += 1
        else:
            assert result.exit_code == 0, (seed, result.output)
            again, report = read_pairs(out)  # the canonical file reads back to the same pairs
            assert content(again) == content(pairs), seed
            assert report.rows_read == len(pairs) and not report.dropped, seed
            outcomes["read"] += 1
    # The mix must exercise both paths, or the test proves little.
    assert outcomes["read"] >= 10 and outcomes["refused"] >= 10, outcomes

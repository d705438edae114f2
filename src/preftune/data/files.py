"""Raw loading for `formats.py`: a file, a `datasets` folder or a hub name -> numbered raw rows.

Nothing here knows a preference format. Each row comes with the number a user can find it by: the
file line for JSON Lines and CSV, the 1-based row index for a JSON list, parquet and `datasets`
(errors then say "row N"). Unreadable input raises `DataError` with that number.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.data.schema import DataError

# "org/name" or "org/name:split"; a path ending in a data-file suffix is a missing file, not a hub name.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt")
# CSV cells that may hold JSON-encoded message lists (the only way to store them in CSV).
_CSV_JSON_COLUMNS = ("prompt", "chosen", "rejected", "completion", "conversations", "meta")


@dataclass
class RawRows:
    display: str  # the path or hub name as the user gave it
    name: str  # what goes into PreferencePair.source
    unit: str  # "line": numbers are file lines; "row": numbers are 1-based row indices
    rows: list[tuple[int, Any]]
    notes: list[str] = field(default_factory=list)  # what a user should know: e.g. splits left unread

    def error(self, number: int, reason: str) -> DataError:
        return DataError(self.display, number, f"row {number}: {reason}" if self.unit == "row" else reason)


def type_name(value: Any) -> str:
    """JSON's names for JSON's types, Python's for the rest (parquet can hold bytes, dates...)."""
    names = {str: "string", dict: "object", list: "list", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def load_rows(source: str | Path) -> RawRows:
    """The numbered rows of a file, a `datasets` folder or a hub dataset; every string in them is
    valid Unicode (JSON's escapes can spell half a UTF-16 surrogate pair, which no UTF-8 file can
    hold: writing it out later would fail halfway)."""
    loaded = _load_rows(source)
    for number, row in loaded.rows:
        where = _lone_surrogate(row)
        if where is not None:
            raise loaded.error(number, f"unpaired UTF-16 surrogate in {where} (a \\ud800-\\udfff escape without its other half)")
    return loaded


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, where: str = "the row") -> str | None:
    """Where in a parsed row a string holds a lone surrogate ("field 'chosen'"), or None."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, "a field name") or _lone_surrogate(item, f"field {key!r}" if where == "the row" else where)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _lone_surrogate(item, where)
            if found:
                return found
    return None


def _reject_constant(name: str) -> float:
    # Python's json reads NaN and Infinity, which JSON does not have; writing them back would make
    # files other tools refuse, and a NaN margin makes the loss NaN.
    raise ValueError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def _load_rows(source: str | Path) -> RawRows:
    display, path = str(source), Path(source)
    folder, colon, split = display.rpartition(":")
    if not path.exists() and colon and Path(folder).is_dir():  # FOLDER:split of a saved DatasetDict
        rows, notes = _saved_dataset_rows(Path(folder), display, split)
        return RawRows(display, Path(folder).name, "row", rows, notes)
    if path.is_dir():
        rows, notes = _saved_dataset_rows(path, display)
        return RawRows(display, path.name, "row", rows, notes)
    if not path.exists():
        if _HUB_NAME.match(display) and not display.lower().endswith(_FILE_SUFFIXES):
            return RawRows(display, display, "row", _hub_rows(display))
        raise DataError(display, 0, "no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            return RawRows(display, path.name, "line", _jsonl_rows(path, display))
        if suffix == ".json":
            unit, rows = _json_rows(path, display)
            return RawRows(display, path.name, unit, rows)
        if suffix == ".csv":
            return RawRows(display, path.name, "line", _csv_rows(path, display))
        if suffix == ".parquet":
            return RawRows(display, path.name, "row", _parquet_rows(path, display))
    except OSError as error:
        raise DataError(display, 0, f"cannot read: {error.strerror or error}") from None
    raise DataError(
        display,
        0,
        f"unsupported file type {suffix!r}; expected .jsonl, .json, .csv, .parquet or a datasets folder",
    )


def _jsonl_rows(path: Path, display: str) -> list[tuple[int, Any]]:
    rows = []
    with path.open("rb") as lines:  # binary, so only "\n" ends a line, as JSON Lines says
        for number, raw in enumerate(lines, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(display, number, f"not valid UTF-8: {error.reason}") from None
            text = text.removeprefix("\ufeff") if number == 1 else text
            if text.strip():
                rows.append((number, _parse_json(text, display, number)))
    return rows


def _parse_json(text: str, display: str, number: int) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise DataError(display, number, f"malformed JSON: {error.msg} (column {error.colno})") from None
    except (ValueError, RecursionError) as error:  # e.g. an integer literal longer than Python allows
        raise DataError(display, number, f"malformed JSON: {_one_line(error)}") from None


def _json_rows(path: Path, display: str) -> tuple[str, list[tuple[int, Any]]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(display, line, f"not valid UTF-8: {error.reason}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON Lines saved under a .json name: read it as such
            return "line", _jsonl_rows(path, display)
        raise DataError(
            display, error.lineno, f"malformed JSON: {error.msg} (column {error.colno})"
        ) from None
    except (ValueError, RecursionError) as error:
        raise DataError(display, 0, f"malformed JSON: {_one_line(error)}") from None
    if isinstance(value, dict):
        value = next((value[k] for k in ("data", "train") if isinstance(value.get(k), list)), value)
    if not isinstance(value, list):
        raise DataError(
            display,
            0,
            f"expected a JSON list of rows (or an object with a 'data' or 'train' list), got {type_name(value)}",
        )
    return "row", list(enumerate(value, start=1))


def _csv_rows(path: Path, display: str) -> list[tuple[int, Any]]:
    # Long responses overflow the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    rows: list[tuple[int, Any]] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header: list[str] | None = None
        while True:
            start = reader.line_num + 1  # a quoted cell may span lines: report where the record starts
            try:
                values = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as error:
                raise DataError(display, start, f"malformed CSV: {_one_line(error)}") from None
            if not values:
                continue  # blank line
            if header is None:
                header = values
            elif len(values) > len(header):
                raise DataError(
                    display, start, f"malformed CSV: {len(values)} cells, header has {len(header)}"
                )
            else:
                rows.append((start, _csv_record(header, values)))
    return rows


def _csv_record(header: list[str], values: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, cell in zip(header, values, strict=False):  # missing trailing cells are absent fields
        if cell == "" and key not in ("prompt", "chosen", "rejected", "completion"):
            continue  # an empty optional cell means "not given"
        if key == "label" and cell.strip().lower() in ("true", "false"):
            cell = cell.strip().lower() == "true"  # CSV has no booleans; other text fails as "must be true or false"
        elif key == "margin":
            try:
                cell = float(cell)
            except ValueError:
                pass  # left as text, so the row fails with "must be a number"
        elif key in _CSV_JSON_COLUMNS and cell.lstrip()[:1] in ("[", "{"):
            try:
                decoded = json.loads(cell)
            except (ValueError, RecursionError):
                decoded = None  # text that merely starts with a bracket
            if isinstance(decoded, list | dict):
                cell = decoded
        record[key] = cell
    return record


def _parquet_rows(path: Path, display: str) -> list[tuple[int, Any]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, ValueError) as error:
        raise DataError(display, 0, f"cannot read parquet: {_one_line(error)}") from None
    return list(enumerate(table.to_pylist(), start=1))


def _saved_dataset_rows(path: Path, display: str, split: str = "") -> tuple[list[tuple[int, Any]], list[str]]:
    """The rows of one split (`split`, else "train", else the only one) and a note naming the
    splits left unread, so a held-out `test` split is never skipped without a word."""
    if not any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise DataError(display, 0, "a directory, but not one saved by datasets' save_to_disk")
    import datasets  # slow to import; only folder and hub sources need it

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises many unrelated types for a damaged folder
        raise DataError(display, 0, f"cannot load saved dataset: {_one_line(error)}") from None
    notes = []
    if isinstance(dataset, datasets.DatasetDict):
        if split and split not in dataset:
            raise DataError(display, 0, f"no split {split!r}; splits: {sorted(dataset)}")
        if not split and "train" not in dataset and len(dataset) != 1:
            raise DataError(display, 0, f"no 'train' split; give one as {path}:SPLIT; splits: {sorted(dataset)}")
        chosen = split or ("train" if "train" in dataset else next(iter(dataset)))
        others = sorted(set(dataset) - {chosen})
        if others:
            notes.append(f"read split {chosen!r}; not read: {', '.join(others)} (read one as {path}:{others[0]})")
        dataset = dataset[chosen]
    elif split:
        raise DataError(display, 0, f"{path} holds one dataset, not splits; drop ':{split}'")
    return list(enumerate(dataset, start=1)), notes


def _hub_rows(name: str) -> list[tuple[int, Any]]:
    import datasets

    repo, _, split = name.partition(":")
    try:
        dataset = datasets.load_dataset(repo, split=split or "train")
    except Exception as error:  # offline, unknown repo, bad split: all reported the same way
        raise DataError(
            name, 0, f"no such file, and loading it as a hub dataset failed: {_one_line(error)}"
        ) from None
    return list(enumerate(dataset, start=1))


def text_lines(path: Path, display: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(display, 0, "no such file") from None
    except OSError as error:
        raise DataError(display, 0, f"cannot read: {error.strerror or error}") from None
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").removeprefix("\ufeff").strip()
        except UnicodeDecodeError as error:
            raise DataError(display, number, f"not valid UTF-8: {error.reason}") from None
        if line:
            lines.append(line)
    return lines


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

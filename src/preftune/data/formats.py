"""Readers: every supported source becomes `PreferencePair`s plus a `ReadReport` (DESIGN.md section 3).

`files.py` turns a file, a `datasets` folder or a hub name into numbered raw rows; this module turns
each raw row of a known format into a pair, or into a drop reason that the report counts.
Malformed input (bad JSON, a field of the wrong type) raises `DataError` naming FILE:LINE instead of
being dropped: a typo in a converter should stop the run, not quietly shrink the dataset.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.data.arithmetic import is_task_spec, task_prompts
from preftune.data.files import RawRows, load_rows, text_lines, type_name
from preftune.data.schema import DataError, Message, PreferencePair

FORMATS = ("pairs", "messages", "hh", "sharegpt")
_EXPECTED = (
    "pairs {prompt, chosen, rejected: strings}, messages {chosen, rejected: message lists; optional prompt}, "
    "hh {chosen, rejected: '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts}, "
    "sharegpt {conversations, chosen, rejected}"
)
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_Parsed = tuple[list[Message], Message, Message]  # (prompt, chosen, rejected)


@dataclass
class ReadReport:
    path: str
    format: str
    rows_read: int
    pairs_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    # reason -> 1-based line (JSONL, CSV) or row index (JSON list, parquet, datasets) where it first happened
    examples: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. splits of a datasets folder left unread

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "rows_read": self.rows_read,
            "pairs_kept": self.pairs_kept,
            "dropped": dict(self.dropped),
        } | ({"notes": list(self.notes)} if self.notes else {})


class _Drop(Exception):
    """A well-formed row that cannot become a pair; its message is the reason the report counts."""


class _BadField(Exception):
    """A row of the wrong shape (a field of the wrong type); becomes a DataError at the row's line."""


def read_pairs(source: str | Path, format: str | None = None) -> tuple[list[PreferencePair], ReadReport]:
    """Read every row of `source` as `format` (autodetected when None); drop unusable rows with a reason."""
    if format is not None and format not in FORMATS:
        raise DataError(str(source), 0, f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    loaded = load_rows(source)
    chosen_format = format or _detect_format(loaded)
    parse = _PARSERS[chosen_format]
    report = ReadReport(loaded.display, chosen_format, rows_read=len(loaded.rows), pairs_kept=0, notes=loaded.notes)
    return convert_rows(loaded, report, lambda row: _to_pair(row, parse, loaded.name)), report


def convert_rows(loaded: RawRows, report: ReadReport, convert: Callable[[dict], Any]) -> list:
    """Every row of `loaded` through `convert`. A row it drops (`_Drop`) is counted in `report` with
    its reason and first line; a row of the wrong shape (`_BadField`, or not a JSON object) stops
    the read at its line. No row kept at all is an error that says why."""
    kept = []
    for number, row in loaded.rows:
        if not isinstance(row, dict):
            raise loaded.error(number, f"expected a JSON object per row, got {type_name(row)}")
        try:
            kept.append(convert(row))
        except _Drop as drop:
            reason = str(drop)
            report.dropped[reason] = report.dropped.get(reason, 0) + 1
            report.examples.setdefault(reason, number)
        except _BadField as bad:
            raise loaded.error(number, str(bad)) from None
    report.pairs_kept = len(kept)
    if not kept:
        _raise_no_pairs(loaded, report)
    return kept


def read_prompts(source: str | Path) -> list[list[Message]]:
    """Prompts for generation: JSONL (or any row source) of {"prompt": str | [messages]}, .txt lines,
    or a built-in task's problems, `task:arithmetic[-easy][:train|test[:COUNT]]` (`data/arithmetic.py`)."""
    if is_task_spec(source):
        return task_prompts(source)
    display = str(source)
    if Path(source).suffix.lower() == ".txt":
        prompts = [[Message("user", line)] for line in text_lines(Path(source), display)]
    else:
        loaded = load_rows(source)
        prompts = []
        for number, row in loaded.rows:
            if not isinstance(row, dict):
                raise loaded.error(number, f"expected a JSON object per row, got {type_name(row)}")
            try:
                prompts.append(_prompt_of(row))
            except (_Drop, _BadField) as problem:
                raise loaded.error(number, str(problem)) from None
    if not prompts:
        raise DataError(display, 0, "no prompts")
    return prompts


def read_sft_examples(source: str | Path, format: str | None = None) -> tuple[list[tuple[list[Message], Message]], ReadReport]:
    """Supervised examples (prompt messages, assistant response) for `preftune sft`.

    Rows may be {"prompt": str | [messages], "response": str}, {"messages": [...]} (the last
    assistant turn is the response), or any preference format (its chosen response is used).
    """
    loaded = load_rows(source)
    first = next((row for _, row in loaded.rows if isinstance(row, dict)), {})
    if format is None and "response" not in first and "messages" not in first:
        pairs, report = read_pairs(source, format=format)
        return [(pair.prompt, pair.chosen) for pair in pairs], report
    shape = "prompt-response" if "response" in first else "messages"
    report = ReadReport(path=str(source), format=shape, rows_read=0, pairs_kept=0, notes=loaded.notes)
    examples = []
    for number, row in loaded.rows:
        report.rows_read += 1
        if not isinstance(row, dict):
            raise loaded.error(number, f"expected a JSON object per row, got {type_name(row)}")
        try:
            if shape == "messages":
                messages = _messages("messages", _required(row, "messages"), "user")
                if len(messages) < 2:
                    raise _Drop("fewer than two messages (a prompt and a response)")
                *prompt, response = messages
                if response.role != "assistant":
                    raise _Drop("response is not from the assistant")
                prompt = _prompt_of({"prompt": [m.to_dict() for m in prompt]}) if prompt else []
            else:
                prompt = _prompt_of(row)
                response = Message("assistant", _string(row, "response"))
            if not prompt:
                raise _Drop("empty prompt")
            if not response.content.strip():
                raise _Drop("empty response")
        except _Drop as drop:
            report.dropped[str(drop)] = report.dropped.get(str(drop), 0) + 1
            report.examples.setdefault(str(drop), number)
            continue
        except _BadField as bad:
            raise loaded.error(number, str(bad)) from None
        examples.append((prompt, response))
    report.pairs_kept = len(examples)
    if not examples:
        raise DataError(loaded.display, 0, f"no usable examples: read {report.rows_read} rows, dropped: {json.dumps(report.dropped)}")
    return examples, report


def _to_pair(row: dict, parse: Callable[[dict], _Parsed], default_source: str) -> PreferencePair:
    # Metadata is checked first so that a wrong-typed field is an error whether or not the row drops.
    margin, pair_id = _margin(row), _id(row)
    source = _optional(row, "source", str) or default_source
    meta = _optional(row, "meta", dict) or {}
    system = _optional(row, "system", str)
    prompt, chosen, rejected = parse(row)
    if system and not (prompt and prompt[0].role == "system"):
        prompt = [Message("system", system), *prompt]
    if not chosen.content.strip() or not rejected.content.strip():
        raise _Drop("empty response")
    if not any(m.content.strip() for m in prompt if m.role != "system"):
        raise _Drop("empty prompt")
    if prompt[-1].role != "user":
        raise _Drop("last prompt turn is not from the user")
    if chosen.content == rejected.content:
        raise _Drop("chosen == rejected")
    return PreferencePair(prompt, chosen, rejected, margin=margin, id=pair_id, source=source, meta=meta)


def _parse_pairs(row: dict) -> _Parsed:
    prompt, chosen, rejected = (_string(row, key) for key in ("prompt", "chosen", "rejected"))
    return [Message("user", prompt)], Message("assistant", chosen), Message("assistant", rejected)


def _parse_messages(row: dict) -> _Parsed:
    chosen = _messages("chosen", _required(row, "chosen"), "assistant")
    rejected = _messages("rejected", _required(row, "rejected"), "assistant")
    # An empty text prompt adds no turn (CSV cannot tell "" from absent); the conversations may hold it.
    raw_prompt = row.get("prompt")
    empty = raw_prompt is None or (isinstance(raw_prompt, str) and not raw_prompt.strip())
    prompt = [] if empty else _messages("prompt", raw_prompt, "user")
    return _split_responses(prompt, chosen, rejected)


def _parse_sharegpt(row: dict) -> _Parsed:
    conversation = _messages("conversations", _required(row, "conversations"), "user")
    chosen = _messages("chosen", _required(row, "chosen"), "assistant")
    rejected = _messages("rejected", _required(row, "rejected"), "assistant")
    return _split_responses(conversation, chosen, rejected)


def _parse_hh(row: dict) -> _Parsed:
    chosen_prompt, chosen = _split_transcript(_string(row, "chosen"))
    rejected_prompt, rejected = _split_transcript(_string(row, "rejected"))
    if chosen_prompt != rejected_prompt:
        raise _Drop("prompts differ between chosen and rejected")
    return _transcript_messages(chosen_prompt), Message("assistant", chosen), Message("assistant", rejected)


_PARSERS = {"pairs": _parse_pairs, "messages": _parse_messages, "hh": _parse_hh, "sharegpt": _parse_sharegpt}


def _split_responses(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> _Parsed:
    """The final message of each side is the response; turns before it extend the shared prompt."""
    if not chosen or not rejected:
        raise _Drop("empty response")
    *chosen_turns, chosen_reply = chosen
    *rejected_turns, rejected_reply = rejected
    if chosen_turns != rejected_turns:
        raise _Drop("prompts differ between chosen and rejected")
    if chosen_reply.role != "assistant" or rejected_reply.role != "assistant":
        raise _Drop("response is not from the assistant")
    # UltraFeedback-style rows repeat the prompt at the start of each conversation; don't say it twice.
    if chosen_turns[: len(prompt)] == prompt:
        return chosen_turns, chosen_reply, rejected_reply
    return prompt + chosen_turns, chosen_reply, rejected_reply


def _split_transcript(text: str) -> tuple[str, str]:
    """HH-RLHF: the prompt runs through the last "\\n\\nAssistant:"; the response is the rest."""
    cut = text.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise _Drop("transcript has no Assistant turn")
    end = cut + len(_HH_ASSISTANT)
    response = text[end:]
    if "\n\nHuman:" in response:
        raise _Drop("transcript does not end with an Assistant turn")
    # The transcripts put one space after the colon; it belongs to the format, not the answer.
    return text[:end], response.removeprefix(" ")


def _transcript_messages(prompt: str) -> list[Message]:
    if prompt.startswith("Human:"):
        prompt = "\n\n" + prompt
    # re.split with a group gives [before, speaker, text, speaker, text, ...].
    parts = _HH_TURN.split(prompt)
    if parts[0].strip():
        raise _Drop("transcript does not start with a Human turn")
    turns = [
        Message("user" if speaker == "Human" else "assistant", text.strip())
        for speaker, text in zip(parts[1::2], parts[2::2], strict=True)
    ]
    return turns[:-1]  # the last turn is the empty Assistant slot the response fills


def _prompt_of(row: dict) -> list[Message]:
    prompt = _messages("prompt", _required(row, "prompt"), "user")
    system = _optional(row, "system", str)
    if system and not (prompt and prompt[0].role == "system"):
        prompt = [Message("system", system), *prompt]
    if not any(m.content.strip() for m in prompt if m.role != "system"):
        raise _Drop("empty prompt")
    if prompt[-1].role != "user":
        raise _Drop("last prompt turn is not from the user")
    return prompt


def _messages(key: str, value: Any, default_role: str) -> list[Message]:
    """A list of messages, one message dict, or a bare string (one message in `default_role`)."""
    if isinstance(value, str):
        return [Message(default_role, value)]
    if isinstance(value, dict):
        return [_message(f"field '{key}'", value)]
    if isinstance(value, list):
        return [_message(f"field '{key}' item {i}", item) for i, item in enumerate(value, start=1)]
    raise _BadField(
        f"field '{key}' must be a list of messages, a message or a string, got {type_name(value)}"
    )


def _message(where: str, item: Any) -> Message:
    if not isinstance(item, dict):
        raise _BadField(f"{where} must be a message object, got {type_name(item)}")
    # role/content (OpenAI style) or from/value (ShareGPT); Arrow fills absent struct fields with None.
    role = item.get("role") if item.get("role") is not None else item.get("from")
    content = item.get("content") if item.get("content") is not None else item.get("value")
    if not isinstance(role, str):
        raise _BadField(f"{where} needs a string 'role' (or 'from'), got {type_name(role)}")
    if not isinstance(content, str):
        raise _BadField(f"{where} needs a string 'content' (or 'value'), got {type_name(content)}")
    if role.lower() not in _ROLES:
        raise _Drop(f"unknown message role {role[:40]!r}")
    return Message(_ROLES[role.lower()], content)


def _required(row: dict, key: str) -> Any:
    value = row.get(key)
    if value is None:
        raise _Drop(f"missing field '{key}'")
    return value


def _string(row: dict, key: str) -> str:
    value = _required(row, key)
    if not isinstance(value, str):
        raise _BadField(f"field '{key}' must be a string, got {type_name(value)}")
    return value


def _optional(row: dict, key: str, kind: type) -> Any:
    value = row.get(key)
    if value is not None and not isinstance(value, kind):
        raise _BadField(
            f"field '{key}' must be {'a string' if kind is str else 'an object'}, got {type_name(value)}"
        )
    return value


def _margin(row: dict) -> float | None:
    value = row.get("margin")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadField(f"field 'margin' must be a number, got {type_name(value)}")
    try:
        margin = float(value)
    except OverflowError:  # a JSON integer too large for a float
        raise _BadField("field 'margin' is too large for a float") from None
    if not math.isfinite(margin):  # NaN / inf from a CSV cell or parquet: the loss would be NaN
        raise _BadField(f"field 'margin' must be a finite number, got {margin}")
    return margin


def _id(row: dict) -> str | None:
    value = row.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _BadField(f"field 'id' must be a string or an integer, got {type_name(value)}")
    return str(value)


def _detect_format(loaded: RawRows) -> str:
    """The format of the first row whose keys and value types match one; rows before it drop later."""
    first: tuple[int, list[str]] | None = None
    for number, row in loaded.rows:
        if not isinstance(row, dict):
            raise loaded.error(number, f"expected a JSON object per row, got {type_name(row)}")
        detected = _format_of(row)
        if detected:
            return detected
        if first is None:
            first = (number, sorted(row)[:20])
    if first is None:
        raise DataError(loaded.display, 0, "no usable pairs: read 0 rows, dropped: {}")
    number = first[0]
    first_row = dict(loaded.rows)[number]
    if "completion" in first_row and "label" in first_row:  # TRL's KTO rows (data/unpaired.py)
        raise loaded.error(number, "rows are unpaired {prompt, completion, label} (KTO's format): `preftune kto` "
                                   "reads them; this command needs pairs with chosen and rejected")  # fmt: skip
    problem = _column_type_problem(first_row)
    if problem:  # the shape of a pair, with a column of the wrong type: name the column
        raise loaded.error(number, f"{problem}; expected one of {_EXPECTED}")
    raise loaded.error(number, f"unknown format; keys seen: {first[1]}; expected one of {_EXPECTED}")


def _format_of(row: dict) -> str | None:
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    if chosen is None or rejected is None:
        return None
    if row.get("conversations") is not None:
        return "sharegpt"
    if isinstance(chosen, list | dict) or isinstance(prompt, list):
        return "messages"
    if isinstance(chosen, str) and _is_transcript(chosen) and isinstance(rejected, str) and _is_transcript(rejected):
        return "hh"  # whole HH transcripts, whatever else the row carries (some copies add a "prompt")
    if isinstance(chosen, str):
        return "pairs" if isinstance(prompt, str) else "hh" if prompt is None else None
    return None


def _is_transcript(text: str) -> bool:
    return text.lstrip(" ").startswith("\n\nHuman:") and _HH_ASSISTANT in text


def _column_type_problem(row: Any) -> str | None:
    """For a row with pair-like columns that fits no format: which column has the wrong type."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        return None
    for key in ("chosen", "rejected"):
        if not isinstance(row[key], str | list | dict):
            return f"field '{key}' must be a string, a message or a list of messages, got {type_name(row[key])}"
    if "prompt" in row and not isinstance(row["prompt"], str | list):
        return f"field 'prompt' must be a string or a list of messages, got {type_name(row['prompt'])}"
    return None


def _raise_no_pairs(loaded: RawRows, report: ReadReport) -> None:
    # A field that no row has means the rows are some other format, not that every row is broken.
    for reason, count in report.dropped.items():
        if reason.startswith("missing field") and count == report.rows_read:
            number, first_row = loaded.rows[0]
            raise loaded.error(
                number,
                f"unknown format; keys seen: {sorted(first_row)[:20]}; format {report.format!r} needs "
                f"{reason.removeprefix('missing ')}; expected one of {_EXPECTED}",
            )
    dropped = json.dumps(report.dropped, ensure_ascii=False)
    raise DataError(loaded.display, 0, f"no usable pairs: read {report.rows_read} rows, dropped: {dropped}")

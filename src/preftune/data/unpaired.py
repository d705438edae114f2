"""The unpaired format KTO learns from: single answers marked desirable or not (TRL's KTO format).

A row is `{"prompt": str | [messages], "completion": str | message | [messages], "label": bool}`,
with the optional `id`, `source`, `meta` and `system` of the pair formats. A completion given as a
message list ends in the assistant's answer; turns before it extend the prompt (TRL's
conversational rows). Pairs of any format become unpaired rows too: chosen -> label True,
rejected -> label False (`unpair`), as TRL's `unpair_preference_dataset` does.

Like the pair readers (`formats.py`, whose row helpers this module shares), a well-formed row that
cannot be used is dropped with a counted reason, and a row of the wrong shape (a label that is not
true or false) stops the read with FILE:LINE and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from preftune.data.files import RawRows, load_rows, type_name
from preftune.data.formats import (
    FORMATS,
    ReadReport,
    _BadField,
    _Drop,
    _id,
    _messages,
    _optional,
    _prompt_of,
    convert_rows,
    read_pairs,
)
from preftune.data.schema import DataError, Message, PreferencePair, UnpairedExample

UNPAIRED = "unpaired"
UNPAIRED_FIELDS = ("prompt", "completion", "label")


def is_unpaired_row(row: Any) -> bool:
    """A row with a completion and a label, and no chosen/rejected: the unpaired format."""
    return isinstance(row, dict) and "completion" in row and "label" in row and "chosen" not in row


def holds_unpaired_rows(source: str | Path) -> bool:
    """Whether `source`'s first row is an unpaired one (for commands that take either kind)."""
    first = next((row for _, row in load_rows(source).rows if isinstance(row, dict)), None)
    return is_unpaired_row(first)


def read_unpaired(source: str | Path, format: str | None = None) -> tuple[list[UnpairedExample], ReadReport]:
    """Unpaired examples from `source`: unpaired rows as they are, or pairs (any pair format) split
    into one desirable and one undesirable example each. `format` None detects which."""
    if format is not None and format != UNPAIRED and format not in FORMATS:
        raise DataError(str(source), 0, f"unknown format {format!r}; expected {UNPAIRED} or one of {', '.join(FORMATS)}")
    loaded = load_rows(source)
    if format is None:
        first = next((row for _, row in loaded.rows if isinstance(row, dict)), None)
        format = UNPAIRED if is_unpaired_row(first) else None
    if format != UNPAIRED:
        pairs, report = read_pairs(source, format=format)
        report.format = f"{report.format} (unpaired: chosen -> true, rejected -> false)"
        report.pairs_kept = 2 * len(pairs)
        return unpair(pairs), report
    report = ReadReport(loaded.display, UNPAIRED, rows_read=len(loaded.rows), pairs_kept=0, notes=loaded.notes)
    return convert_rows(loaded, report, lambda row: _to_example(row, loaded)), report


def unpair(pairs: list[PreferencePair]) -> list[UnpairedExample]:
    """Each pair as two examples, chosen (label True) then rejected (label False); the pair's id and
    margin go into `meta` so an example can be traced back to its pair."""
    examples = []
    for pair in pairs:
        meta = dict(pair.meta) | {key: value for key, value in (("pair_id", pair.id), ("margin", pair.margin)) if value is not None}
        for completion, label in ((pair.chosen, True), (pair.rejected, False)):
            examples.append(UnpairedExample(list(pair.prompt), completion, label, source=pair.source, meta=dict(meta)))
    return examples


def _to_example(row: dict, loaded: RawRows) -> UnpairedExample:
    # Metadata and the label are checked first, so a wrong-typed field is an error even on a dropped row.
    example_id = _id(row)
    source = _optional(row, "source", str) or loaded.name
    meta = _optional(row, "meta", dict) or {}
    label = row.get("label")
    if label is None:
        raise _Drop("missing field 'label'")
    if not isinstance(label, bool):  # 1/0 or "yes" would be a guess about what the converter meant
        raise _BadField(f"field 'label' must be true or false, got {type_name(label)} {str(label)[:20]!r}")
    prompt = _prompt_of(row)
    raw_completion = row.get("completion")
    if raw_completion is None:
        raise _Drop("missing field 'completion'")
    *turns, completion = _messages("completion", raw_completion, "assistant") or [Message("assistant", "")]
    if completion.role != "assistant":
        raise _Drop("completion is not from the assistant")
    if turns and turns[: len(prompt)] != prompt:  # earlier turns extend the prompt (unless they repeat it)
        prompt = prompt + turns
    elif turns:
        prompt = turns
    if prompt[-1].role != "user":
        raise _Drop("last prompt turn is not from the user")
    if not completion.content.strip():
        raise _Drop("empty completion")
    return UnpairedExample(prompt, completion, label, id=example_id, source=source, meta=meta)

"""THE preference format: every reader turns its source into `PreferencePair`s (DESIGN.md section 3).

A pair is a conversation so far (`prompt`, a list of messages) and two candidate assistant turns,
`chosen` and `rejected`. Canonical JSONL stores one pair per line as plain dicts; `read_jsonl` and
`write_jsonl` are exact inverses.

KTO learns from single answers instead: an `UnpairedExample` is a prompt, one assistant turn and a
`label` (True: desirable, thumbs up). Its rows are TRL's KTO format (`data/unpaired.py`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A problem with an input file, reported to users as one line: `FILE:LINE: reason`.

    `line` is 1-based; 0 means the problem concerns the whole file.
    """

    def __init__(self, path: str | Path, line: int, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}" if line else f"{self.path}: {reason}")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Conversation = list[Message]


@dataclass
class PreferencePair:
    prompt: list[Message]
    chosen: Message
    rejected: Message
    margin: float | None = None
    id: str | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "prompt": [m.to_dict() for m in self.prompt],
            "chosen": self.chosen.to_dict(),
            "rejected": self.rejected.to_dict(),
        }
        for key in ("margin", "id", "source"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        if self.meta:
            row["meta"] = self.meta
        return row

    @property
    def prompt_text(self) -> str:
        """The last user turn: what a person would call "the prompt" in a table."""
        users = [m.content for m in self.prompt if m.role == "user"]
        return users[-1] if users else (self.prompt[-1].content if self.prompt else "")


@dataclass
class UnpairedExample:
    prompt: list[Message]
    completion: Message
    label: bool  # True: desirable (thumbs up); False: undesirable
    id: str | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """TRL's KTO row: text prompt and completion when the prompt is one user turn, else messages."""
        plain = len(self.prompt) == 1 and self.prompt[0].role == "user"
        row: dict[str, Any] = {
            "prompt": self.prompt[0].content if plain else [m.to_dict() for m in self.prompt],
            "completion": self.completion.content if plain else [self.completion.to_dict()],
            "label": self.label,
        }
        for key in ("id", "source"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        if self.meta:
            row["meta"] = self.meta
        return row


def user_prompt(text: str) -> list[Message]:
    return [Message("user", text)]


def write_jsonl(pairs: list[PreferencePair] | list[UnpairedExample], path: str | Path) -> None:
    """Write canonical JSONL (one `to_dict()` per line, UTF-8, no ASCII escaping)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(str(path), 0, "is a folder; give the name of the JSONL file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a failure never leaves half a file.
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with open(handle, "w", encoding="utf-8") as out:
            for pair in pairs:
                out.write(json.dumps(pair.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
        umask = os.umask(0)  # mkstemp makes the file private; give it a plain open()'s permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

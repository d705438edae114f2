"""Candidate files: what gets labelled, by people in the app or by a judge (`preftune judge`).

Two shapes are accepted:
- `preftune generate` output, JSONL of `{"prompt": str | [messages], "completions": [str, ...],
  "id"?: str, "models"?: [str, ...]}` with at least two completions per line. With `models` (one
  name per completion, for the model arena) every pair of completions by different models becomes
  an item; without it, the first two completions do;
- anything `preftune.data.formats.read_pairs` reads (pairs, messages, HH, ShareGPT...): each pair's
  two responses become the candidates; which was "chosen" is ignored, since the point is to re-label.

The first line decides: a `completions` key means the first shape.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Candidates:
    prompt: list  # list[Message]
    responses: list[str]
    id: str | None = None
    # The model behind each response, when the file says (the arena); else None.
    models: list[str] | None = None

    def pairs(self) -> list[tuple[int, int]]:
        """Which two responses make an item: every pair by different models, or the first two."""
        if self.models is None:
            return [(0, 1)]
        k = len(self.responses)
        return [(i, j) for i in range(k) for j in range(i + 1, k) if self.models[i] != self.models[j]]


@dataclass
class CandidatesReport:
    path: str
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        return f"{self.path}: read {self.read}, kept {self.kept}, dropped: {reasons}"


def _first_row(path: Path) -> dict | None:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return None
                return row if isinstance(row, dict) else None
    return None


def read_candidates(path: str | Path) -> tuple[list[Candidates], CandidatesReport]:
    """Read a candidates file (see module docstring). Raises DataError (FILE:LINE: reason)."""
    from preftune.data.schema import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, 0, "no such file")
    first = _first_row(path) if path.suffix in (".jsonl", ".json", "") else None
    if first is not None and "completions" in first:
        return _read_completions(path)
    from preftune.data.formats import read_pairs

    pairs, pairs_report = read_pairs(path)
    report = CandidatesReport(str(path), read=pairs_report.rows_read, kept=len(pairs))
    report.dropped.update(pairs_report.dropped)
    rows = [Candidates(p.prompt, [p.chosen.content, p.rejected.content], p.id) for p in pairs]
    return rows, report


def read_answers(path: str | Path) -> tuple[list[Candidates], CandidatesReport]:
    """For a thumbs project, where each answer is an item of its own: `preftune generate` output
    (every completion, one is enough), unpaired rows {"prompt", "completion", "label"?} (a label
    there is ignored: people give their own), or pairs (both answers)."""
    from preftune.data.schema import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, 0, "no such file")
    first = _first_row(path) if path.suffix in (".jsonl", ".json", "") else None
    if first is not None and "completions" in first:
        return _read_completions(path, minimum=1)
    if first is not None and "completion" in first:
        return _read_completions(path, minimum=1, key="completion")
    return read_candidates(path)


def _read_completions(path: Path, minimum: int = 2, key: str = "completions") -> tuple[list[Candidates], CandidatesReport]:
    from preftune.data.schema import DataError, Message, user_prompt

    rows, report = [], CandidatesReport(str(path))
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            report.read += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(path, number, f"not valid JSON ({error.msg})") from None
            if not isinstance(row, dict) or "prompt" not in row or key not in row:
                shape = '"completions": [...]' if key == "completions" else '"completion": "..."'
                raise DataError(path, number, f'expected {{"prompt": ..., {shape}}}')
            prompt = row["prompt"]
            if isinstance(prompt, str):
                messages = user_prompt(prompt)
            elif isinstance(prompt, list) and all(
                isinstance(m, dict) and {"role", "content"} <= m.keys() for m in prompt
            ):
                messages = [Message(str(m["role"]), str(m["content"])) for m in prompt]
            else:
                raise DataError(path, number, "prompt must be a string or a list of {role, content} messages")
            completions = [row[key]] if key == "completion" else row[key]
            if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
                raise DataError(path, number, f"{key} must be {'a string' if key == 'completion' else 'a list of strings'}")
            models = row.get("models")
            if models is not None and (
                not isinstance(models, list)
                or not all(isinstance(m, str) and m.strip() for m in models)
                or len(models) != len(completions)
            ):
                raise DataError(path, number, "models must be a list of names, one per completion")
            if len(completions) < minimum:
                report.dropped[f"fewer than {minimum} completions"] += 1
                continue
            if models is not None and len(set(models)) < 2:
                report.dropped["completions all from one model"] += 1
                continue
            rows.append(Candidates(messages, completions, None if row.get("id") is None else str(row["id"]), models))
            report.kept += 1
    return rows, report

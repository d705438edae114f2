"""Verifiable rewards for the arithmetic task (`data/arithmetic.py`): checked, not judged.

- `exact_match`: 1 if the last integer in the response equals the problem's answer, else 0. The
  answer is recomputed from the prompt, so the reward needs no side channel. "Last integer" is the
  usual extraction rule for math answers (the final number a model writes is its answer).
- `format`: 1 if the response is exactly one integer (an optional final period and whitespace
  allowed), which is what the task's instruction asks for; else 0. A shaping reward: it rises
  before accuracy does, and it keeps answers short.

A prompt that is not one of the task's problems is an error, not a 0: a silent 0 would train the
policy on nothing while looking like a hard task.
"""

from __future__ import annotations

import re

from ..data.arithmetic import solve
from ..data.schema import DataError

_INTEGER = re.compile(r"-?\d+")
_ONLY_AN_INTEGER = re.compile(r"\s*-?\d+\.?\s*")


def _prompt_text(prompt) -> str:
    """The last user message of a conversation, or the prompt itself when it is a string."""
    if isinstance(prompt, str):
        return prompt
    return next((m.content for m in reversed(prompt) if m.role == "user"), "")


def extract_answer(response: str) -> int | None:
    """The last integer in the response, or None when it has none."""
    found = _INTEGER.findall(response.replace(",", ""))  # "1,000" is one thousand
    return int(found[-1]) if found else None


def exact_match_score(prompt, response: str) -> float:
    text = _prompt_text(prompt)
    answer = solve(text)
    if answer is None:
        raise DataError("judge:exact_match", 0, f"the prompt is not an arithmetic task problem: {text[:80]!r}")
    return 1.0 if extract_answer(response) == answer else 0.0


def format_score(prompt, response: str) -> float:
    return 1.0 if _ONLY_AN_INTEGER.fullmatch(response) else 0.0

"""Judges by name: functions (prompt, response) -> float, higher is better, usable wherever a
reward model is (PPO rewards, best-of-n, labeling candidates, evaluation).

Spellings accepted by `get_judge`:
- `sentiment` or `judge:sentiment`: VADER compound in [-1, 1] (`judges/sentiment.py`);
- `readability` or `judge:readability`: Flesch reading ease, higher = easier (`judges/readability.py`);
- `kid` or `judge:kid`: the demo's gold judge, readability x on-topic relevance x coherence
  (`judges/kid.py`, `judges/coherence.py`);
- `rm:DIR`: a reward model saved by `preftune rm` (its `final/` or a checkpoint), scoring the
  prompt + response through the one tokenization path, in batches (`score_batch`);
- `exact_match`, `format` (or `judge:`-prefixed): verifiable rewards of the arithmetic task
  (`judges/verifiable.py`, `data/arithmetic.py`);
- `python:MODULE:FUNCTION`: the user's own `(prompt, response) -> float` (`judges/python_reward.py`);
- several of these joined by commas, e.g. `exact_match,format`: their sum (each part kept in
  `Judge.parts`, so a trainer can log them one by one).

Lexicon judges ignore the prompt; the reward model reads it. A prompt is a string (one user
turn) or a list of `Message`s (a whole conversation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.schema import DataError
from .kid import kid_score, kid_scores
from .python_reward import PYTHON_PREFIX, load_python_reward
from .readability import readability_score
from .sentiment import sentiment_score
from .verifiable import exact_match_score, format_score

RM_PREFIX = "rm:"
JUDGE_PREFIX = "judge:"

# name -> score(prompt, response); a plain dict on purpose (DESIGN.md section 2.1).
BUILTIN_JUDGES: dict[str, Callable[[Any, str], float]] = {
    "sentiment": sentiment_score,
    "readability": readability_score,
    "kid": kid_score,
    "exact_match": exact_match_score,
    "format": format_score,
}
# Judges that score whole lists faster than one pair at a time (the embedding model batches).
BATCHED_JUDGES: dict[str, Callable[[list, list[str]], list[float]]] = {"kid": kid_scores}


class JudgeError(DataError):
    """A judge spec that names nothing: reported as one line, `SPEC: reason`."""

    def __init__(self, spec: str, reason: str):
        super().__init__(spec, 0, reason)


@dataclass(frozen=True)
class Judge:
    """A named scorer. `score_many`, when set, scores whole lists at once (reward models batch)."""

    name: str
    score: Callable[[Any, str], float]
    score_many: Callable[[list, list[str]], list[float]] | None = None
    parts: tuple[Judge, ...] = ()  # the judges a comma-joined spec sums, in order; empty otherwise

    def __call__(self, prompt: Any, response: str) -> float:
        return float(self.score(prompt, response))


def known_judges(include_python: bool = True) -> list[str]:
    names = [JUDGE_PREFIX + name for name in BUILTIN_JUDGES] + [RM_PREFIX + "DIR"]
    return names + [PYTHON_PREFIX + "MODULE:FUNCTION"] if include_python else names


def get_judge(
    spec: str,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    allow_python: bool = True,
) -> Judge:
    """The judge `spec` names (see the module docstring). The batching and length settings apply
    to `rm:` judges only. `allow_python=False` refuses `python:` specs: the web app passes it, so a
    form field can never import and call arbitrary code on the server. Raises `JudgeError` (a `DataError`: one line) for unknown names, and
    `ModelLoadError` for an `rm:` folder that does not load."""
    spec = spec.strip()
    if "," in spec and not spec.startswith(RM_PREFIX):  # a folder name may hold a comma; a sum never starts with rm:
        parts = [p.strip() for p in spec.split(",")]
        if any(not p for p in parts):
            raise JudgeError(spec, "an empty name in a comma-joined list of judges")
        judges = tuple(get_judge(p, device=device, batch_size=batch_size, max_length=max_length,
                                 max_prompt_length=max_prompt_length, allow_python=allow_python) for p in parts)  # fmt: skip
        return summed_judge(judges)
    if spec.startswith(PYTHON_PREFIX):
        if not allow_python:
            raise JudgeError(spec, "python: rewards run code and are accepted on the command line only")
        return Judge(spec, load_python_reward(spec))  # PythonRewardError is a one-line DataError
    if spec.startswith(RM_PREFIX):
        folder = spec[len(RM_PREFIX) :]
        if not folder:
            raise JudgeError(spec, "rm: needs a folder, e.g. rm:runs/rm/final")
        return reward_model_judge(folder, device=device, batch_size=batch_size, max_length=max_length,
                                  max_prompt_length=max_prompt_length)  # fmt: skip
    name = spec.removeprefix(JUDGE_PREFIX)
    if name not in BUILTIN_JUDGES:
        raise JudgeError(spec, f"unknown judge; choose one of {', '.join(known_judges(allow_python))}")
    return Judge(name, BUILTIN_JUDGES[name], BATCHED_JUDGES.get(name))


def summed_judge(judges: tuple[Judge, ...]) -> Judge:
    """One judge scoring the sum of `judges`; each still scores in its own batches."""

    def score_many(prompts: list, responses: list[str]) -> list[float]:
        columns = [score_batch(judge, prompts, responses) for judge in judges]
        return [sum(row) for row in zip(*columns, strict=True)]

    return Judge(
        ",".join(j.name for j in judges),
        lambda prompt, response: score_many([prompt], [response])[0],
        score_many,
        judges,
    )


def reward_model_judge(
    folder: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    max_length: int = 1024,
    max_prompt_length: int = 512,
) -> Judge:
    """A frozen reward model as a judge; `score_many` batches through `score_responses`."""
    from ..models.reward_model import load_scalar_model, score_responses

    model, tokenizer = load_scalar_model(folder, device=device)
    model.requires_grad_(False).eval()

    def score_many(prompts: list, responses: list[str]) -> list[float]:
        return score_responses(model, tokenizer, prompts, responses, batch_size=batch_size,
                               max_length=max_length, max_prompt_length=max_prompt_length)  # fmt: skip

    return Judge(
        f"{RM_PREFIX}{folder}", lambda prompt, response: score_many([prompt], [response])[0], score_many
    )


def score_batch(judge: Judge, prompts: list, responses: list[str]) -> list[float]:
    """Scores of each (prompt, response): one batched call for a reward model, a loop otherwise."""
    if len(prompts) != len(responses):
        raise ValueError(f"score_batch: {len(prompts)} prompts but {len(responses)} responses")
    if judge.score_many is not None:
        return [float(s) for s in judge.score_many(list(prompts), list(responses))]
    return [judge(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]

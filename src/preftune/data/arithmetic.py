"""A verifiable task the package generates: arithmetic word problems with one integer answer.

Each problem comes from one of a few sentence templates filled with a name, an item and numbers
drawn from a seeded generator, so a problem set is the same on every machine for a given seed.
Problems are split into "train" and "test" by a hash of their text, not by position: the two
splits never share a question whatever counts are asked for, and asking for more problems only
adds to a split.

The answer can always be recomputed from the text (`solve`): the templates are inverted with
regular expressions, so the exact-match reward (`judges/verifiable.py`) needs nothing but the
prompt it is given, wherever that prompt came from (a trainer, `preftune eval`, a JSONL file).

Prompts are read as `task:arithmetic`, `task:arithmetic:test` or `task:arithmetic:train:500`
wherever a prompts file is accepted (`data.formats.read_prompts`). `task:arithmetic-easy` is the
same templates with small numbers (single-digit operands, answers up to 36): the level at which a
135M model's arithmetic is often right once it answers with the number alone, so RL on a CPU has a
signal to learn from (`bench/online_rl.py`).
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from .schema import DataError, Message

TASK_PREFIX = "task:"
TASK_NAMES = ("arithmetic", "arithmetic-easy")
DIFFICULTIES = ("normal", "easy")
# Appended to every question: the format reward checks that the answer is exactly this shape.
INSTRUCTION = "Answer with just the number."
DEFAULT_COUNTS = {"train": 2000, "test": 200}
# About 75,000 distinct questions exist, 1 in TEST_SHARE of them in "test"; far below that, random
# draws find new ones quickly, so counts are capped there rather than searched to exhaustion.
MAX_COUNTS = {"train": 20000, "test": 5000}
# The easy level has about 12,000 distinct questions (products have no name field: only 200 of them).
MAX_COUNTS_EASY = {"train": 5000, "test": 1000}
TEST_SHARE = 5  # one problem in TEST_SHARE goes to the test split (by hash of its text)

NAMES = ("Ana", "Ben", "Mia", "Sam", "Leo", "Zoe", "Tom", "Eva", "Raj", "Ida")
ITEMS = ("apple", "pencil", "marble", "cookie", "sticker", "book", "shell", "card")


@dataclass(frozen=True)
class Template:
    """A question with fields {name}, {item} and numbers {a}, {b}, {c}; `draw` picks the numbers,
    `answer` computes the result from them."""

    text: str
    draw: Callable[[random.Random], dict[str, int]]
    answer: Callable[[dict[str, int]], int]


def _sum(rng: random.Random) -> dict[str, int]:
    return {"a": rng.randint(2, 20), "b": rng.randint(2, 20)}


def _difference(rng: random.Random) -> dict[str, int]:
    a = rng.randint(5, 30)
    return {"a": a, "b": rng.randint(1, a - 1)}  # a positive answer


def _product(rng: random.Random) -> dict[str, int]:
    return {"a": rng.randint(2, 9), "b": rng.randint(2, 9)}


def _quotient(rng: random.Random) -> dict[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return {"a": a, "c": a * b}  # c shared among a: a whole answer b


def _sum_easy(rng: random.Random) -> dict[str, int]:
    return {"a": rng.randint(1, 9), "b": rng.randint(1, 9)}


def _difference_easy(rng: random.Random) -> dict[str, int]:
    a = rng.randint(2, 10)
    return {"a": a, "b": rng.randint(1, a - 1)}


def _product_easy(rng: random.Random) -> dict[str, int]:
    return {"a": rng.randint(2, 6), "b": rng.randint(2, 6)}


def _quotient_easy(rng: random.Random) -> dict[str, int]:
    a, b = rng.randint(2, 5), rng.randint(2, 5)
    return {"a": a, "c": a * b}


# Per difficulty, the number drawers in TEMPLATES' order; the sentences and answers are shared.
EASY_DRAWS = (_sum_easy, _difference_easy, _product_easy, _quotient_easy)

TEMPLATES = (
    Template("{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?", _sum,
             lambda v: v["a"] + v["b"]),
    Template("{name} had {a} {item}s and gave away {b}. How many {item}s are left?", _difference,
             lambda v: v["a"] - v["b"]),
    Template("There are {a} boxes with {b} {item}s in each box. How many {item}s are there in all?", _product,
             lambda v: v["a"] * v["b"]),
    Template("{name} shares {c} {item}s equally among {a} friends. How many {item}s does each friend get?",
             _quotient, lambda v: v["c"] // v["a"]),
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    question: str  # the word problem alone
    answer: int

    @property
    def prompt(self) -> str:
        """What the model is asked: the question and the answer format."""
        return f"{self.question} {INSTRUCTION}"


def _pattern(template: str) -> re.Pattern:
    """The template as a regex: numbers as named groups, a repeated word field as a backreference."""
    parts, seen = [], set()
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is None:
            continue
        if field in seen:
            parts.append(f"(?P={field})")
        else:
            seen.add(field)
            parts.append(f"(?P<{field}>-?\\d+)" if field in "abc" else f"(?P<{field}>[A-Za-z]+)")
    return re.compile("".join(parts))


_PATTERNS = [(_pattern(t.text), t) for t in TEMPLATES]


def solve(text: str) -> int | None:
    """The answer of the problem in `text` (a question, or a prompt that contains one); None if no
    template matches, i.e. the text is not one of this task's problems."""
    for pattern, template in _PATTERNS:
        match = pattern.search(text)
        if match:
            numbers = {k: int(v) for k, v in match.groupdict().items() if k in "abc"}
            return template.answer(numbers)
    return None


def split_of(question: str) -> str:
    """"test" for about 1 in TEST_SHARE questions, "train" otherwise; stable across runs and machines."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def problems(split: str = "train", count: int | None = None, seed: int = 0, difficulty: str = "normal") -> list[Problem]:
    """`count` distinct problems of `split` ("train" or "test"), the same list for the same seed.

    Drawn in one seeded stream and filtered by `split_of`, so a larger count extends a smaller one.
    `difficulty` "easy" draws small numbers into the same templates (the split rule is the same, so
    an easy test question is never an easy or normal train question).
    """
    if split not in DEFAULT_COUNTS:
        raise ValueError(f"arithmetic task: split must be train or test, got {split!r}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"arithmetic task: difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    count = DEFAULT_COUNTS[split] if count is None else count
    cap = (MAX_COUNTS_EASY if difficulty == "easy" else MAX_COUNTS)[split]
    if count > cap:
        raise ValueError(f"arithmetic task: at most {cap} {split} problems, asked for {count}")
    rng = random.Random(seed)
    found: list[Problem] = []
    seen: set[str] = set()
    while len(found) < count:
        index = rng.randrange(len(TEMPLATES))
        template = TEMPLATES[index]
        numbers = (EASY_DRAWS[index] if difficulty == "easy" else template.draw)(rng)
        question = template.text.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), **numbers)
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        found.append(Problem(question, template.answer(numbers)))
    return found


def is_task_spec(source) -> bool:
    return isinstance(source, str) and source.startswith(TASK_PREFIX)


def task_prompts(spec: str) -> list[list[Message]]:
    """Prompts of `task:NAME[:SPLIT[:COUNT]]`, each one user message; a bad spec is a one-line error."""
    fields = spec[len(TASK_PREFIX) :].split(":")
    name, split = fields[0], fields[1] if len(fields) > 1 else "train"
    if name not in TASK_NAMES or len(fields) > 3 or split not in DEFAULT_COUNTS:
        raise DataError(spec, 0, f"unknown task; use task:NAME[:train|test[:COUNT]] with NAME one of {', '.join(TASK_NAMES)}")
    try:
        count = int(fields[2]) if len(fields) > 2 else None
    except ValueError:
        raise DataError(spec, 0, f"the count must be a whole number, got {fields[2]!r}") from None
    if count is not None and count < 1:
        raise DataError(spec, 0, f"the count must be at least 1, got {count}")
    try:
        chosen = problems(split, count, difficulty="easy" if name.endswith("-easy") else "normal")
    except ValueError as err:
        raise DataError(spec, 0, str(err)) from None
    return [[Message("user", p.prompt)] for p in chosen]

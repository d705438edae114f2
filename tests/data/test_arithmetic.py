"""The arithmetic task: deterministic, disjoint splits, answers recomputable from the text."""

import pytest

from preftune.data import arithmetic
from preftune.data.formats import read_prompts
from preftune.data.schema import DataError


def test_problems_are_deterministic_and_a_larger_count_extends_a_smaller():
    first = arithmetic.problems("train", 50)
    assert first == arithmetic.problems("train", 50)
    assert arithmetic.problems("train", 80)[:50] == first
    assert arithmetic.problems("train", 50, seed=1) != first
    assert len({p.question for p in arithmetic.problems("train", 500)}) == 500  # distinct


def test_train_and_test_splits_never_share_a_question():
    train = {p.question for p in arithmetic.problems("train", 2000)}
    test = {p.question for p in arithmetic.problems("test", 200)}
    assert not train & test
    assert all(arithmetic.split_of(q) == "test" for q in test)


def test_every_answer_is_recomputed_from_the_text_and_every_template_is_used():
    problems = arithmetic.problems("train", 400) + arithmetic.problems("test", 100)
    for problem in problems:
        assert arithmetic.solve(problem.prompt) == problem.answer, problem.question
        assert problem.answer > 0
    used = {next(t.text for t in arithmetic.TEMPLATES if arithmetic._pattern(t.text).search(p.question)) for p in problems}
    assert used == {t.text for t in arithmetic.TEMPLATES}
    # Hand-checked instances of each template.
    assert arithmetic.solve("Ana has 7 apples and gets 5 more. How many apples does Ana have now?") == 12
    assert arithmetic.solve("Ben had 20 cards and gave away 8. How many cards are left?") == 12
    assert arithmetic.solve("There are 3 boxes with 4 books in each box. How many books are there in all?") == 12
    assert arithmetic.solve("Mia shares 36 shells equally among 3 friends. How many shells does each friend get?") == 12
    assert arithmetic.solve("What is the capital of France?") is None
    # A repeated word must be the same word: a different name is not the template.
    assert arithmetic.solve("Ana has 7 apples and gets 5 more. How many apples does Ben have now?") is None


def test_task_specs_read_as_prompts_and_bad_ones_are_one_line_errors():
    prompts = read_prompts("task:arithmetic:test:5")
    assert len(prompts) == 5 and prompts[0][0].role == "user"
    assert prompts[0][0].content.endswith(arithmetic.INSTRUCTION)
    assert len(read_prompts("task:arithmetic")) == arithmetic.DEFAULT_COUNTS["train"]
    for spec, reason in [("task:algebra", "unknown task"), ("task:arithmetic:dev", "unknown task"),
                         ("task:arithmetic:test:many", "whole number"), ("task:arithmetic:test:0", "at least 1"),
                         ("task:arithmetic:test:100000", "at most 5000")]:  # fmt: skip
        with pytest.raises(DataError, match=reason) as err:
            read_prompts(spec)
        assert str(err.value).startswith(spec)


def test_easy_level_has_small_numbers_disjoint_splits_and_reads_as_a_task():
    train = arithmetic.problems("train", 1500, difficulty="easy")
    test = arithmetic.problems("test", 300, difficulty="easy")
    assert train == arithmetic.problems("train", 1500, difficulty="easy")  # seeded
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(arithmetic.split_of(p.question) == "test" for p in test)
    for problem in train + test:
        assert arithmetic.solve(problem.prompt) == problem.answer, problem.question
        assert 1 <= problem.answer <= 36  # 6 x 6 is the largest; differences stay positive
        numbers = [int(w) for w in problem.question.replace("?", " ").replace(".", " ").split() if w.isdigit()]
        # Sums of 1..9, differences from 2..10, products of 2..6, 5 x 5 items shared at most.
        assert max(numbers) <= (10 if "more" in problem.question or "gave" in problem.question else 25)
    # Every template appears, and the normal level really is harder (it has answers above 18).
    used = {next(t.text for t in arithmetic.TEMPLATES if arithmetic._pattern(t.text).search(p.question)) for p in test}
    assert used == {t.text for t in arithmetic.TEMPLATES}
    assert max(p.answer for p in arithmetic.problems("test", 300)) > 36
    prompts = read_prompts("task:arithmetic-easy:test:300")
    assert [m[0].content for m in prompts] == [p.prompt for p in test]
    with pytest.raises(DataError, match="at most 1000"):
        read_prompts("task:arithmetic-easy:test:1001")
    with pytest.raises(ValueError, match="difficulty must be one of normal, easy"):
        arithmetic.problems("test", 5, difficulty="hard")

"""Verifiable rewards (exact match, format), python:MODULE:FUNCTION rewards, and comma-joined sums."""

import sys

import pytest

from preftune.data.schema import DataError, Message
from preftune.judges import get_judge
from preftune.judges.registry import score_batch
from preftune.judges.verifiable import extract_answer

PROMPT = "Ana has 7 apples and gets 5 more. How many apples does Ana have now? Answer with just the number."


def test_exact_match_reads_the_last_integer_and_recomputes_the_answer():
    judge = get_judge("exact_match")
    assert judge(PROMPT, "12") == 1.0
    assert judge(PROMPT, "7 + 5 = 12") == 1.0  # the last number is the answer
    assert judge(PROMPT, "12 apples, no wait, 13") == 0.0
    assert judge(PROMPT, "twelve") == 0.0
    assert judge([Message("system", "Be brief."), Message("user", PROMPT)], "12.") == 1.0  # a conversation
    assert extract_answer("about 1,200 of them") == 1200
    with pytest.raises(DataError, match="not an arithmetic task problem"):
        judge("Tell me about rain.", "12")


def test_format_wants_exactly_one_number():
    judge = get_judge("judge:format")
    assert [judge(PROMPT, r) for r in ("12", " 12.\n", "-3", "12 apples", "The answer is 12.", "")] == [1, 1, 1, 0, 0, 0]


def test_comma_joined_judges_sum_and_keep_their_parts():
    judge = get_judge("exact_match, format")
    assert [p.name for p in judge.parts] == ["exact_match", "format"]
    assert score_batch(judge, [PROMPT] * 3, ["12", "7 + 5 = 12", "13"]) == [2.0, 1.0, 1.0]
    assert judge(PROMPT, "12") == 2.0
    with pytest.raises(DataError, match="empty name"):
        get_judge("exact_match,,format")
    with pytest.raises(DataError, match="unknown judge"):
        get_judge("exact_match,nope")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "judge_user_code.py").write_text(
        "def shout(prompt, response):\n    return response.count('!') + len(prompt) / 1000\n"
        "def one_argument(response):\n    return 1.0\n"
        "def words(prompt, response):\n    return 'many'\n"
        "def infinite(prompt, response):\n    return float('inf')\n"
        "NOT_A_FUNCTION = 3\n"
    )
    yield
    sys.modules.pop("judge_user_code", None)


def test_python_reward_is_imported_from_the_current_folder(user_module):
    judge = get_judge("python:judge_user_code:shout")
    assert judge("abc", "hi!!") == pytest.approx(2.003)
    # A conversation reaches the user's function as its last user message.
    assert judge([Message("user", "abcd"), Message("assistant", "x"), Message("user", "ab")], "!") == pytest.approx(1.002)


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("python:no_such_module_here:score", "cannot import module 'no_such_module_here'"),
        ("python:judge_user_code:missing", "has no 'missing'"),
        ("python:judge_user_code:NOT_A_FUNCTION", "is a int, not a function"),
        ("python:judge_user_code:one_argument", r"one_argument\(response\) must accept \(prompt, response\)"),
        ("python:just_a_module", "use python:MODULE:FUNCTION"),
    ],
)
def test_python_reward_errors_name_the_module_and_function(user_module, spec, reason):
    with pytest.raises(DataError, match=reason) as err:
        get_judge(spec)
    assert str(err.value).startswith(spec + ": ")


def test_python_reward_must_return_a_finite_number(user_module):
    with pytest.raises(DataError, match=r"judge_user_code.words returned 'many', not a number"):
        get_judge("python:judge_user_code:words")("p", "r")
    with pytest.raises(DataError, match="not a finite number"):
        get_judge("python:judge_user_code:infinite")("p", "r")

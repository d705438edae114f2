"""`preftune judge`: pairs labelled from a candidates file (judge names are tested in tests/judges)."""

from __future__ import annotations

import json

import pytest

from preftune.data.schema import DataError, user_prompt
from preftune.judges import Judge, judge_file, label_candidates
from preftune.web.candidates import Candidates, read_candidates


def test_label_candidates_takes_best_and_worst_and_drops_ties():
    by_length = Judge("length", lambda _prompt, response: float(len(response)))
    rows = [
        Candidates(user_prompt("p1"), ["mid-size", "a", "the longest one"], "r1"),
        Candidates(user_prompt("p2"), ["same", "size"], "r2"),
    ]
    pairs, dropped = label_candidates(rows, by_length)
    assert dropped == {"tie": 1}
    (pair,) = pairs
    assert (pair.chosen.content, pair.rejected.content, pair.id) == ("the longest one", "a", "r1")
    assert pair.meta == {"judge": "length", "chosen_score": 15.0, "rejected_score": 1.0}
    assert pair.source == "judge:length" and pair.margin is None


def test_label_candidates_scores_everything_in_one_batched_call():
    calls = []

    def score_many(prompts, responses):
        calls.append(len(responses))
        return [float(len(r)) for r in responses]

    batched = Judge("rm:fake", lambda p, r: 1 / 0, score_many)
    rows = [Candidates(user_prompt(f"p{i}"), ["short", "much longer"], f"r{i}") for i in range(3)]
    pairs, _ = label_candidates(rows, batched)
    assert calls == [6] and [p.chosen.content for p in pairs] == ["much longer"] * 3
    assert pairs[0].prompt == user_prompt("p0")  # the whole conversation reaches the judge


def test_judge_file_writes_pairs_the_reader_accepts(tmp_path):
    from preftune.data.formats import read_pairs

    source = tmp_path / "candidates.jsonl"
    rows = [
        {"prompt": "How was it?", "completions": ["It was terrible.", "It was lovely!"]},
        {"prompt": [{"role": "user", "content": "And now?"}], "completions": ["Great fun!", "Sad and dull."]},
        {"prompt": "Only one?", "completions": ["just one"]},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = judge_file("sentiment", source, tmp_path / "pairs.jsonl")
    assert (report.read, report.kept, dict(report.dropped)) == (3, 2, {"fewer than 2 completions": 1})
    pairs, _ = read_pairs(tmp_path / "pairs.jsonl")
    assert [p.chosen.content for p in pairs] == ["It was lovely!", "Great fun!"]
    assert [p.prompt_text for p in pairs] == ["How was it?", "And now?"]


def test_candidates_reader_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completions": ["a", "b"]}\n{"prompt": 3, "completions": ["a", "b"]}\n')
    with pytest.raises(DataError) as error:
        read_candidates(bad)
    assert str(error.value) == f"{bad}:2: prompt must be a string or a list of {{role, content}} messages"
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match="no such file"):
        read_candidates(missing)


def test_pairs_files_are_accepted_as_candidates(tmp_path):
    source = tmp_path / "pairs.jsonl"
    source.write_text(json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad"}) + "\n")
    rows, report = read_candidates(source)
    assert rows[0].responses == ["good", "bad"] and report.kept == 1

"""The run log's JSONL: rows whose text holds Unicode line separators survive reading and resume."""

from __future__ import annotations

from preftune.runlog import RunLog, read_jsonl

# A model's completion can hold any of these; json.dumps(ensure_ascii=False) writes them raw, and
# str.splitlines() (but not JSON) treats each as a line break.
SEPARATORS = "\u2028 \u2029 \x85 \x0b \x0c \x1c"


def test_samples_with_unicode_line_separators_read_back_whole(tmp_path):
    log = RunLog(tmp_path)
    rows = [{"prompt": "p", "policy": f"one{SEPARATORS}two", "policy_score": 1.0}]
    log.log_samples(1, rows)
    log.log_samples(2, rows)
    read = read_jsonl(tmp_path / "samples.jsonl")
    assert [r["step"] for r in read] == [1, 2]
    assert read[0]["policy"] == f"one{SEPARATORS}two"


def test_resume_truncation_keeps_rows_with_unicode_line_separators(tmp_path):
    log = RunLog(tmp_path)
    for step in (1, 2, 3):
        log.log_samples(step, [{"prompt": "p", "policy": f"step {step}\u2028end"}])
    log.truncate_after(2)
    assert [(r["step"], r["policy"]) for r in read_jsonl(tmp_path / "samples.jsonl")] == [(1, "step 1\u2028end"), (2, "step 2\u2028end")]

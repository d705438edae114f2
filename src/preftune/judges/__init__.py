"""Judges: named functions (prompt, response) -> float, higher is better.

The names (`sentiment`, `readability`, `rm:DIR`, optionally `judge:`-prefixed) live in
`registry.py`, re-exported here. This module adds what `preftune judge` does with one: label
candidate answers as preference pairs (`label_candidates`, `judge_file`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from preftune.judges.registry import Judge, JudgeError, get_judge, known_judges, score_batch

__all__ = [
    "Judge",
    "JudgeError",
    "JudgeReport",
    "get_judge",
    "judge_file",
    "known_judges",
    "label_candidates",
]


@dataclass
class JudgeReport:
    judge: str
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    path: str | None = None

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        return f"judge {self.judge}: read {self.read}, wrote {self.kept} pairs, dropped: {reasons} -> {self.path}"


def label_candidates(candidates: list, judge: Judge) -> tuple[list, Counter]:
    """(pairs, drop reasons): per prompt, the best-scored response is chosen, the worst rejected.

    `candidates` are `web.candidates.Candidates` (a prompt as messages, two or more responses).
    `margin` stays unset (a judge's score gap is not on the human strength scale); the two scores
    are kept in `meta`. Equal best and worst scores say nothing and are dropped as ties.
    """
    from preftune.data.schema import Message, PreferencePair

    prompts = [row.prompt for row in candidates for _ in row.responses]
    responses = [response for row in candidates for response in row.responses]
    scores = iter(score_batch(judge, prompts, responses))  # one batched call for a reward model
    pairs, dropped = [], Counter()
    for row in candidates:
        mine = [next(scores) for _ in row.responses]
        best = max(range(len(mine)), key=mine.__getitem__)
        worst = min(range(len(mine)), key=mine.__getitem__)
        if mine[best] == mine[worst]:
            dropped["tie"] += 1
            continue
        pairs.append(
            PreferencePair(
                prompt=list(row.prompt),
                chosen=Message("assistant", row.responses[best]),
                rejected=Message("assistant", row.responses[worst]),
                id=row.id,
                source=f"judge:{judge.name}",
                meta={"judge": judge.name, "chosen_score": mine[best], "rejected_score": mine[worst]},
            )
        )
    return pairs, dropped


def judge_file(judge: str | Judge, candidates: str | Path, out: str | Path) -> JudgeReport:
    """`preftune judge`: label a candidates file with a judge and write canonical pairs JSONL."""
    from preftune.data.schema import write_jsonl
    from preftune.web.candidates import read_candidates

    judge = get_judge(judge) if isinstance(judge, str) else judge
    rows, read_report = read_candidates(candidates)
    pairs, dropped = label_candidates(rows, judge)
    write_jsonl(pairs, out)
    return JudgeReport(judge.name, read_report.read, len(pairs), read_report.dropped + dropped, str(out))

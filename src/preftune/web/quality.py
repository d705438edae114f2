"""The quality page's numbers: per-annotator behaviour and agreement, from a project's votes.

Judges (`judge:NAME`) appear beside people in every table, so their agreement with humans can be
read off the same kappa table. They see no page, so they have no timing or left-pick rate.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from preftune.web.agreement import (
    cohen_kappa,
    krippendorff_alpha,
    nominal_value,
    ordinal_value,
    pairwise_kappa,
)

# Reading a prompt and two answers takes longer than this; a median below it means clicking through.
TOO_FAST_SECONDS = 4.0
# Left-pick rate flagged when a two-sided binomial test against 0.5 rejects at about p < 0.01
# (normal approximation: |k - n/2| / sqrt(n/4) > 2.58), and only with enough decisive votes.
POSITION_BIAS_Z = 2.58
POSITION_BIAS_MIN_VOTES = 10


@dataclass
class AnnotatorQuality:
    user_id: Any
    name: str
    role: str
    votes: int
    skips: int
    median_seconds: float | None
    too_fast: bool
    left_pick_rate: float | None
    left_pick_votes: int
    position_bias: bool
    gold_votes: int
    gold_accuracy: float | None


def annotator_quality(votes: list[dict[str, Any]]) -> list[AnnotatorQuality]:
    """One row per voter (by user id: two people may share a name), ordered by name;
    `votes` as returned by `votes.project_votes`."""
    by_user: dict[Any, list[dict[str, Any]]] = {}
    for vote in votes:
        by_user.setdefault(vote["user_id"], []).append(vote)
    rows = []
    for mine in sorted(by_user.values(), key=lambda mine: (mine[0]["user_name"], str(mine[0]["user_id"]))):
        name, role = mine[0]["user_name"], mine[0]["user_role"]
        judged = [v for v in mine if v["choice"] != "skip"]
        timed = [v["seconds"] for v in judged if v["seconds"] is not None]
        median = statistics.median(timed) if timed else None
        decisive = [v for v in judged if v["choice"] in ("a", "b")] if role != "judge" else []
        left_picks = sum(v["choice"] == v["shown_left"] for v in decisive)
        left_rate = left_picks / len(decisive) if decisive else None
        biased = len(decisive) >= POSITION_BIAS_MIN_VOTES and (
            abs(left_picks - len(decisive) / 2) / math.sqrt(len(decisive) / 4) > POSITION_BIAS_Z
        )
        gold = [v for v in judged if v["gold"] is not None]
        rows.append(
            AnnotatorQuality(
                user_id=mine[0]["user_id"],
                name=name,
                role=role,
                votes=len(judged),
                skips=len(mine) - len(judged),
                median_seconds=median,
                too_fast=median is not None and median < TOO_FAST_SECONDS,
                left_pick_rate=left_rate,
                left_pick_votes=len(decisive),
                position_bias=biased,
                gold_votes=len(gold),
                gold_accuracy=sum(v["choice"] == v["gold"] for v in gold) / len(gold) if gold else None,
            )
        )
    return rows


def vote_tables(votes: list[dict[str, Any]]) -> tuple[dict, dict]:
    """(nominal table, ordinal table) as {item_id: {voter id: value}} for `agreement`."""
    nominal: dict[int, dict[Any, int]] = {}
    ordinal: dict[int, dict[Any, int]] = {}
    for vote in votes:
        value = nominal_value(vote["choice"])
        if value is not None:
            nominal.setdefault(vote["item_id"], {})[vote["user_id"]] = value
        value = ordinal_value(vote["choice"], vote["strength"])
        if value is not None:
            ordinal.setdefault(vote["item_id"], {})[vote["user_id"]] = value
    return nominal, ordinal


@dataclass
class Agreement:
    alpha_nominal: float
    alpha_ordinal: float
    # Items with at least two judgments (what alpha is computed over).
    shared_items: int
    kappas: list[tuple[str, str, int, float]]


def agreement(votes: list[dict[str, Any]]) -> Agreement:
    nominal, ordinal = vote_tables(votes)
    names = {vote["user_id"]: vote["user_name"] for vote in votes}
    return Agreement(
        alpha_nominal=krippendorff_alpha(nominal, "nominal"),
        alpha_ordinal=krippendorff_alpha(ordinal, "ordinal"),
        shared_items=sum(len(row) >= 2 for row in nominal.values()),
        # Computed over ids, shown with names.
        kappas=[(names[a], names[b], shared, kappa) for a, b, shared, kappa in pairwise_kappa(nominal)],
    )


@dataclass
class JudgeAgreement:
    """How often people agree with one judge (the "AI" beside the humans)."""

    judge: str
    items: int  # items with the judge's pick and at least one human vote
    human_votes: int  # the human (non-skip) votes on those items
    vote_agreement: float | None  # share of those votes that match the judge
    majority_items: int  # of those items, the ones with a strict human majority
    majority_agreement: float | None  # share of them where the majority matches the judge
    majority_kappa: float  # Cohen's kappa, judge against the human majority


def judge_agreement(votes: list[dict[str, Any]]) -> list[JudgeAgreement]:
    """One row per judge in `votes` (as returned by `votes.project_votes`), by judge name."""
    human: dict[int, list[str]] = {}
    picks: dict[Any, dict[int, str]] = {}
    names: dict[Any, str] = {}
    for vote in votes:
        if vote["choice"] == "skip":
            continue
        if vote["user_role"] == "judge":
            picks.setdefault(vote["user_id"], {})[vote["item_id"]] = vote["choice"]
            names[vote["user_id"]] = vote["user_name"]
        else:
            human.setdefault(vote["item_id"], []).append(vote["choice"])
    rows = []
    for judge_id, judged in picks.items():
        shared = [item for item in judged if item in human]
        matches = [choice == judged[item] for item in shared for choice in human[item]]
        majority = {}
        for item in shared:
            (top, count), *rest = Counter(human[item]).most_common()
            if not rest or rest[0][1] < count:
                majority[item] = top
        agree = [judged[item] == label for item, label in majority.items()]
        rows.append(
            JudgeAgreement(
                judge=names[judge_id],
                items=len(shared),
                human_votes=len(matches),
                vote_agreement=sum(matches) / len(matches) if matches else None,
                majority_items=len(majority),
                majority_agreement=sum(agree) / len(agree) if agree else None,
                majority_kappa=cohen_kappa([judged[i] for i in majority], list(majority.values())),
            )
        )
    return sorted(rows, key=lambda row: row.judge)

"""AI suggestions: a judge's pick, hidden unless the admin turns it on, shown in the page's terms;
and the quality page's agreement between the judge and the people."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select

from preftune.web import db, jobs
from preftune.web.assign import assign_items
from preftune.web.quality import judge_agreement
from preftune.web.store import NewItem

HAPPY, GRIM = "What a wonderful, lovely, delightful day!", "This is a terrible, awful, miserable mess."


def test_judge_picks_are_hidden_by_default_and_shown_in_the_page_terms_when_on(site):
    store = site.store
    project_id = store.create_project("p")
    store.add_items(project_id, [NewItem([{"role": "user", "content": "How is it?"}], HAPPY, GRIM)])
    ann, user_id = site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    # The real sentiment judge (VADER) votes, as the admin's Auto-label would, without the thread.
    assert "judge:sentiment voted on 1 new items" in jobs.judge_work(store, project_id, "sentiment")(lambda *_: None)
    assert "AI suggestion" not in ann.get("/annotate").text
    admin = site.admin()
    admin.post(
        f"/admin/projects/{project_id}/settings",
        data={"csrf_token": site.csrf(admin), "guideline": "", "overlap": "1", "gold_rate": "0", "show_suggestions": "on"},
    )  # fmt: skip
    assert store.project(project_id)["show_suggestions"] is True
    with store.read() as c:
        left = c.execute(select(db.assignments.c.shown_left).where(db.assignments.c.user_id == user_id)).scalar()
    page = ann.get("/annotate").text
    # The judge preferred the happy answer, response a: "A" when a is on the left for this person.
    expected = "A is better" if left == "a" else "B is better"
    assert '<details class="suggestion" id="suggestion">' in page  # collapsed until clicked
    assert f"<li><bdi>judge:sentiment</bdi>: {expected}</li>" in page
    quality = admin.get(f"/admin/projects/{project_id}/quality").text
    assert "AI suggestions are shown to annotators in this project" in quality


def _vote(user, role, item, choice):
    return {"user_id": user, "user_name": user, "user_role": role, "item_id": item, "choice": choice,
            "strength": None, "shown_left": "a", "seconds": 5.0, "gold": None}  # fmt: skip


def test_judge_agreement_counts_votes_and_majorities():
    votes = [
        _vote("judge:x", "judge", 1, "a"), _vote("ann", "annotator", 1, "a"), _vote("bob", "annotator", 1, "a"),
        _vote("judge:x", "judge", 2, "b"), _vote("ann", "annotator", 2, "a"), _vote("bob", "annotator", 2, "b"),
        _vote("judge:x", "judge", 3, "a"), _vote("ann", "annotator", 3, "b"), _vote("bob", "annotator", 3, "b"),
        _vote("judge:x", "judge", 4, "b"), _vote("ann", "annotator", 4, "skip"),  # no human vote: left out
        _vote("ann", "annotator", 5, "a"),  # no judge pick: left out
    ]  # fmt: skip
    (row,) = judge_agreement(votes)
    assert (row.judge, row.items, row.human_votes) == ("judge:x", 3, 6)
    assert row.vote_agreement == pytest.approx(3 / 6)  # item 1: 2 of 2, item 2: 1 of 2, item 3: 0 of 2
    assert (row.majority_items, row.majority_agreement) == (2, 0.5)  # item 2 is split: no majority
    # Judge (a, a) against majority (a, b): p_o = 1/2, p_e = (2*1 + 0*1)/4 = 1/2, so kappa = 0.
    assert row.majority_kappa == pytest.approx(0.0)
    assert judge_agreement([_vote("ann", "annotator", 1, "a")]) == []
    (lonely,) = judge_agreement([_vote("judge:y", "judge", 1, "a")])
    assert lonely.vote_agreement is None and math.isnan(lonely.majority_kappa)

"""Simultaneous admin actions, on SQLite and PostgreSQL: constraints and ids decide, never names."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from preftune.web import db
from preftune.web.assign import assign_items
from preftune.web.quality import agreement, annotator_quality
from preftune.web.store import StoreError


def _at_once(count: int, work) -> list:
    """Run `work(i)` in `count` threads released together; returns each result or exception."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as error:  # collected, then asserted on by the test
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_simultaneous_invites_of_one_name_create_one_annotator(store):
    project_id = store.create_project("p")
    for round_ in range(3):
        name = f"same-{round_}"
        results = _at_once(8, lambda _i, name=name: store.create_user(name, "annotator", project_id))
        created = [r for r in results if isinstance(r, tuple)]
        refused = [r for r in results if isinstance(r, StoreError)]
        assert len(created) == 1 and len(refused) == 7, results
        assert all(str(r) == f"\u2068{name!r}\u2069 is already in this project" for r in refused)
    assert sorted(u["name"] for u in store.users(project_id)) == ["same-0", "same-1", "same-2"]


def test_simultaneous_projects_of_one_name_create_one(store):
    results = _at_once(6, lambda _i: store.create_project("twin"))
    assert sum(isinstance(r, int) for r in results) == 1
    assert sum(isinstance(r, StoreError) for r in results) == 5, results


def test_simultaneous_assign_requests_add_each_assignment_once(store, make_items):
    project_id = store.create_project("p", overlap=2)
    store.add_items(project_id, make_items(30))
    for name in ("a", "b", "c"):
        store.create_user(name, "annotator", project_id)
    results = _at_once(4, lambda i: assign_items(store, project_id, seed=i))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r.created for r in results) == 60  # 30 items x overlap 2, whoever did it
    a = db.assignments
    with store.read() as c:
        per_item = c.execute(select(a.c.item_id, func.count()).group_by(a.c.item_id)).all()
        positions = c.execute(select(a.c.user_id, a.c.position)).all()
    assert sorted(n for _item, n in per_item) == [2] * 30
    assert len(set(positions)) == len(positions)  # no two queue slots collide


def test_quality_keeps_two_people_of_one_name_apart():
    def vote(user_id, item, choice):
        return dict(user_id=user_id, user_name="sam", user_role="annotator", item_id=item, choice=choice,
                    shown_left="a", seconds=10.0, gold=None, strength=None)  # fmt: skip

    votes = [vote(1, 1, "a"), vote(1, 2, "a"), vote(2, 1, "b"), vote(2, 2, "b")]
    rows = annotator_quality(votes)
    assert [(r.name, r.votes) for r in rows] == [("sam", 2), ("sam", 2)]
    result = agreement(votes)
    assert result.shared_items == 2  # two raters per item, not one rater overwriting the other
    assert [(first, second, shared) for first, second, shared, _k in result.kappas] == [("sam", "sam", 2)]

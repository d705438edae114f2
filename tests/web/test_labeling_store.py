"""The store's guarantees, run against SQLite and a real PostgreSQL (fixture `store`)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select

from preftune.web import db
from preftune.web.assign import assign_items
from preftune.web.export import aggregate
from preftune.web.migrations import SCHEMA_VERSION, current_version
from preftune.web.store import NewItem, StoreError, hash_token
from preftune.web.votes import (
    AlreadyVoted,
    NotAssigned,
    assignment_for,
    next_assignment,
    progress,
    project_votes,
    record_vote,
)


def _items(n, prefix="Q"):
    return [
        NewItem(
            [{"role": "user", "content": f"{prefix}{i}?"}], f"{prefix}{i} answer A", f"{prefix}{i} answer B"
        )
        for i in range(n)
    ]


def _project(store, n_items=6, people=("ann", "bob", "cat"), overlap=2, gold_rate=0.0):
    project_id = store.create_project("p", "Be *kind*.", overlap=overlap, gold_rate=gold_rate)
    store.add_items(project_id, _items(n_items))
    users = {name: store.create_user(name, "annotator", project_id)[0] for name in people}
    return project_id, users


def test_schema_is_created_and_stamped(store):
    assert store.schema_version == SCHEMA_VERSION
    assert current_version(store.engine) == SCHEMA_VERSION


def test_projects_and_items_round_trip(store):
    project_id = store.create_project("demo", "guide", overlap=3, gold_rate=0.1)
    with pytest.raises(StoreError, match="already exists"):
        store.create_project("demo")
    ids = store.add_items(project_id, _items(3))
    item = store.item(ids[1])
    assert item["prompt"] == [{"role": "user", "content": "Q1?"}]
    assert (item["response_a"], item["response_b"]) == ("Q1 answer A", "Q1 answer B")
    store.set_gold(ids[0], "b")
    assert store.item_counts(project_id) == {"items": 3, "ready": 3, "pending": 0, "gold": 1, "votes": 0, "skips": 0}
    with pytest.raises(StoreError, match="gold answer"):
        store.set_gold(ids[0], "left")
    assert store.project_by_name("demo")["overlap"] == 3


def test_tokens_are_stored_hashed_and_sessions_expire_with_logout(store):
    project_id = store.create_project("p")
    user_id, token = store.create_user("ann", "annotator", project_id)
    with store.read() as c:
        stored = c.execute(select(db.users.c.token_hash).where(db.users.c.id == user_id)).scalar()
    assert stored == hash_token(token) and token not in stored
    assert store.user_by_token(token)["id"] == user_id
    assert store.user_by_token(token + "x") is None
    cookie, csrf = store.create_session(user_id)
    assert store.session(cookie)["csrf"] == csrf
    store.end_session(cookie)
    assert store.session(cookie) is None


def test_assignment_respects_overlap_and_balances_load(store):
    project_id, users = _project(store, n_items=9, overlap=2)
    report = assign_items(store, project_id, seed=1)
    assert report.created == 18 and report.short_items == 0
    with store.read() as c:
        rows = c.execute(select(db.assignments.c.item_id, db.assignments.c.user_id)).all()
    per_item = Counter(item for item, _ in rows)
    assert set(per_item.values()) == {2}
    assert len(set(rows)) == len(rows)  # distinct annotators per item
    assert sorted(Counter(user for _, user in rows).values()) == [6, 6, 6]
    # A second run adds nothing; a new person and new items are topped up.
    assert assign_items(store, project_id, seed=2).created == 0
    store.add_items(project_id, _items(2, prefix="N"))
    assert assign_items(store, project_id, seed=3).created == 4


def test_gold_items_are_mixed_in_at_the_rate(store):
    project_id, users = _project(store, n_items=12, people=("ann", "bob"), overlap=2, gold_rate=0.2)
    gold_ids = [i["id"] for i in store.items(project_id)[:3]]
    for item_id in gold_ids:
        store.set_gold(item_id, "a")
    assign_items(store, project_id, seed=0)
    for user_id in users.values():
        with store.read() as c:
            mine = [
                r.item_id
                for r in c.execute(select(db.assignments).where(db.assignments.c.user_id == user_id))
            ]
        # 9 regular items each; gold / (gold + 9) ~ 0.2 gives round(0.25 * 9) = 2 gold items.
        assert len(mine) == 11 and sum(i in gold_ids for i in mine) == 2


def test_queue_never_repeats_and_only_holds_own_items(store):
    project_id, users = _project(store, n_items=4, people=("ann", "bob"), overlap=1)
    assign_items(store, project_id, seed=0)
    ann = users["ann"]
    seen = []
    while (assignment := next_assignment(store, ann)) is not None:
        assert assignment["user_id"] == ann
        seen.append(assignment["item_id"])
        record_vote(store, ann, assignment["item_id"], f"vote-{assignment['item_id']:04d}", "skip")
    assert len(seen) == len(set(seen)) == 2
    assert progress(store, ann) == (2, 2)
    bobs = [i for i in (x["id"] for x in store.items(project_id)) if i not in seen]
    with pytest.raises(NotAssigned):
        record_vote(store, ann, bobs[0], "vote-steal-1", "a")
    assert assignment_for(store, ann, bobs[0]) is None


def test_votes_are_recorded_exactly_once(store):
    project_id, users = _project(store, n_items=2, people=("ann",), overlap=1)
    assign_items(store, project_id, seed=0)
    item_id = next_assignment(store, users["ann"])["item_id"]
    first, created = record_vote(store, users["ann"], item_id, "vote-0001", "a", 3, "clearer")
    again, created_again = record_vote(store, users["ann"], item_id, "vote-0001", "a", 3, "clearer")
    assert created and not created_again and first["id"] == again["id"]
    with pytest.raises(AlreadyVoted):
        record_vote(store, users["ann"], item_id, "vote-0002", "b")
    with pytest.raises(StoreError, match="strength"):
        record_vote(store, users["ann"], item_id, "vote-0003", "tie", 2)
    votes = project_votes(store, project_id)
    assert len(votes) == 1 and (votes[0]["choice"], votes[0]["strength"], votes[0]["rationale"]) == (
        "a",
        3,
        "clearer",
    )


def test_concurrent_duplicate_submissions_store_one_vote_each(store):
    project_id, users = _project(store, n_items=8, people=("ann", "bob"), overlap=2)
    assign_items(store, project_id, seed=0)
    items = [i["id"] for i in store.items(project_id)]
    outcomes, errors = Counter(), []

    def submit(user_id, item_id):
        try:
            _vote, created = record_vote(store, user_id, item_id, f"vote-{user_id:03d}-{item_id:03d}", "b")
            outcomes[created] += 1
        except Exception as error:  # collected, the assertion below shows it
            errors.append(error)

    # Every vote sent three times at once, from 48 threads.
    threads = [
        threading.Thread(target=submit, args=(u, i)) for u in users.values() for i in items for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert outcomes == {True: 16, False: 32}
    assert len(project_votes(store, project_id)) == 16


def test_aggregation_from_stored_votes(store):
    project_id, users = _project(store, n_items=3, people=("ann", "bob", "cat"), overlap=3)
    assign_items(store, project_id, seed=0)
    first, second, third = (i["id"] for i in store.items(project_id))
    plan = {first: ["b", "b", "a"], second: ["tie", "tie", "a"], third: ["a", "b", "skip"]}
    for item_id, choices in plan.items():
        for (name, user_id), choice in zip(users.items(), choices, strict=True):
            strength = 4 if choice == "b" and name == "ann" else None
            record_vote(store, user_id, item_id, f"vote-{name}-{item_id}", choice, strength)
    pairs, dropped = aggregate(store.items(project_id), project_votes(store, project_id), "p")
    assert dropped == Counter({"tie": 1, "no majority": 1})
    (pair,) = pairs
    assert pair.chosen.content == "Q0 answer B" and pair.rejected.content == "Q0 answer A"
    assert pair.margin == 1.0 and pair.meta["votes"] == {"a": 1, "b": 2, "tie": 0, "both_bad": 0}

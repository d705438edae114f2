"""The vote's request path, counted: pool checkouts, transactions and statements per vote.

A vote is what `bench/labeling_load.py` does per vote: GET /annotate (JSON) and POST the vote.
Counted with SQLAlchemy's events rather than timed, so the figure holds on any machine. Before
issue 18's rewrite it was 10 checkouts, 10 transactions and 15 statements (25 on SQLite, counting
the BEGINs); now one connection and one transaction per request. Also here: the per-worker session
cache, and that a state change never trusts it alone.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event, func, select, update

from preftune.web import db
from preftune.web import store as store_module
from preftune.web.assign import assign_items
from preftune.web.security import COOKIE
from preftune.web.store import hash_token

# Per vote (GET /annotate + POST vote), at most: one checkout and one transaction per request;
# statements not counting SQLite's explicit BEGINs (2 for the page: the item with its queue
# counts, the first-shown mark; 3 for the vote).
MAX_CHECKOUTS, MAX_TRANSACTIONS, MAX_STATEMENTS = 2, 2, 5
VOTES = 6


def _counted(store):
    """Counters over both of the store's engines (on SQLite the page's write uses `light_engine`)."""
    counts = {"checkout": 0, "begin": 0, "statement": 0}
    engines = {id(e): e for e in (store.engine, store.light_engine)}.values()

    def checkout(*_args):
        counts["checkout"] += 1

    def begin(*_args):
        counts["begin"] += 1

    def statement(_conn, _cursor, sql, *_args):
        counts["statement"] += not sql.lstrip().upper().startswith("BEGIN")

    listeners = (("checkout", checkout), ("begin", begin), ("before_cursor_execute", statement))
    for engine in engines:
        for name, listener in listeners:
            event.listen(engine, name, listener)
    return counts, lambda: [
        event.remove(engine, name, listener) for engine in engines for name, listener in listeners
    ]


def _vote(client, index: int) -> None:
    item = client.get("/annotate", headers={"accept": "application/json"}).json()
    answer = client.post(
        item["vote_url"],
        data={"vote_id": str(uuid.uuid4()), "choice": "left" if index % 3 else "tie"},
        headers={"accept": "application/json", "x-csrf-token": item["csrf"]},
    )
    assert answer.status_code == 200 and answer.json()["created"], answer.text


def test_a_vote_costs_one_connection_and_one_transaction_per_request(any_site, make_items):
    store = any_site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(VOTES + 2))
    ann, user_id = any_site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    _vote(ann, 0)  # the first request reads the session into the cache
    counts, stop = _counted(store)
    try:
        for index in range(1, VOTES + 1):
            _vote(ann, index)
    finally:
        stop()
    per_vote = {name: count / VOTES for name, count in counts.items()}
    assert per_vote["checkout"] <= MAX_CHECKOUTS, per_vote
    assert per_vote["begin"] <= MAX_TRANSACTIONS, per_vote
    assert per_vote["statement"] <= MAX_STATEMENTS, per_vote
    with store.read() as c:
        stored = c.execute(select(func.count()).where(db.votes.c.user_id == user_id)).scalar()
        timed = c.execute(select(func.count()).where(db.votes.c.seconds.is_not(None))).scalar()
    assert stored == timed == VOTES + 1  # every vote stored once, each with its shown time


def test_a_vote_on_an_ended_session_is_refused_and_the_cache_entry_dropped(site, make_items):
    store = site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(2))
    ann, _user_id = site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    item = ann.get("/annotate", headers={"accept": "application/json"}).json()  # cached now
    with store.write() as c:
        c.execute(db.sessions.delete())  # ended behind the cache's back (another worker, say)
    answer = ann.post(
        item["vote_url"],
        data={"vote_id": "vote-ended-01", "choice": "left"},
        headers={"accept": "application/json", "x-csrf-token": item["csrf"]},
    )
    assert answer.status_code == 401 and "Your session has ended" in answer.json()["detail"]
    with store.read() as c:
        assert c.execute(select(func.count()).select_from(db.votes)).scalar() == 0
    assert store.session_from_cache(ann.cookies.get(COOKIE)) is None
    assert ann.get("/annotate").status_code == 401


def test_the_session_cache_expires_and_honours_the_session_expiry(site, monkeypatch):
    store = site.store
    project_id = store.create_project("p")
    ann, _user_id = site.annotator(project_id, "ann")
    assert ann.get("/annotate").status_code == 200
    cookie = ann.cookies.get(COOKIE)
    assert store.session_from_cache(cookie) is not None
    with store.write() as c:
        c.execute(update(db.sessions).values(expires_at=0.0))
    # The cached row carries the expiry: an expired session is not served from memory either.
    store._sessions[hash_token(cookie)][1]["expires_at"] = 0.0
    assert ann.get("/annotate").status_code == 401
    other, _ = site.annotator(project_id, "other")
    assert other.get("/annotate").status_code == 200
    with store.write() as c:
        c.execute(db.sessions.delete())
    monkeypatch.setattr(store_module, "SESSION_CACHE_SECONDS", 0.0)
    assert other.get("/annotate").status_code == 401  # past the TTL the database is read again


@pytest.mark.parametrize("how", ["logout", "revoke", "remove"])
def test_ending_a_session_in_this_process_takes_effect_at_once(site, how):
    store = site.store
    project_id = store.create_project("p")
    ann, user_id = site.annotator(project_id, "ann")
    assert ann.get("/annotate").status_code == 200
    cookie = ann.cookies.get(COOKIE)
    if how == "logout":
        assert (
            ann.post("/logout", data={"csrf_token": site.csrf(ann)}, follow_redirects=False).status_code
            == 303
        )
        ann.cookies.set(COOKIE, cookie)  # a copy of the cookie kept elsewhere is no good either
    elif how == "revoke":
        store.revoke_link(user_id)
    else:
        store.remove_user(user_id)
    assert store.session_from_cache(cookie) is None
    assert ann.get("/annotate").status_code == 401

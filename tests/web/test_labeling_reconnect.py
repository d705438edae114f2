"""PostgreSQL: connections the server ended are replaced, with no `pool_pre_ping` round trip.

The server ends the app's pooled connections (`pg_terminate_backend` from another connection, as a
restart or an idle timeout would); the next vote must still go through, and a statement caught by
the end mid-transaction fails once, cleanly, with the requests after it served on fresh connections
(see `db._server_engine`).
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError

from preftune.web import db
from preftune.web.assign import assign_items

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

JSON = {"accept": "application/json"}


def _terminate_others(url: str) -> int:
    """End every other connection to the database from a connection of our own; wait until gone."""
    engine = create_engine(db.normalize_url(url), poolclass=None)
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    try:
        with engine.connect() as c:
            ended = c.execute(text(f"SELECT count(pg_terminate_backend(pid)) {others}")).scalar()
            for _ in range(100):
                if not c.execute(text(f"SELECT count(*) {others}")).scalar():
                    break
                time.sleep(0.05)
    finally:
        engine.dispose()
    time.sleep(0.1)  # the goodbye reaching the client sockets
    return ended


def _vote(client) -> dict:
    item = client.get("/annotate", headers=JSON).json()
    answer = client.post(
        item["vote_url"],
        data={"vote_id": str(uuid.uuid4()), "choice": "left"},
        headers={**JSON, "x-csrf-token": item["csrf"]},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _site_with_queue(any_site, make_items):
    store = any_site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(6))
    ann, user_id = any_site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    return store, ann, user_id


def test_no_pre_ping_on_postgresql(store):
    assert store.engine.pool._pre_ping is False
    assert store.engine.pool._recycle == db.POOL_RECYCLE_SECONDS


def test_a_vote_after_the_server_ended_the_pooled_connections_goes_through(any_site, make_items, db_url):
    store, ann, user_id = _site_with_queue(any_site, make_items)
    assert _vote(ann)["created"]
    assert store.engine.pool.checkedin() >= 1  # idle connections the server is about to end
    assert _terminate_others(db_url) >= 1
    dropped = []
    event.listen(store.engine, "invalidate", lambda _conn, _record, error: dropped.append(error))
    assert _vote(ann)["created"]  # the checkout saw the closed sockets and took fresh connections
    assert dropped and "closed this connection while it was idle" in str(dropped[0])
    assert _vote(ann)["created"]
    with store.read() as c:
        assert c.execute(select(func.count()).where(db.votes.c.user_id == user_id)).scalar() == 3


def test_a_connection_ended_mid_transaction_fails_once_and_the_pool_recovers(any_site, make_items, db_url):
    store, ann, user_id = _site_with_queue(any_site, make_items)
    assert _vote(ann)["created"]
    with pytest.raises(DBAPIError) as caught:
        with store.read() as c:
            c.execute(text("SELECT 1"))
            _terminate_others(db_url)  # this connection is checked out: only its next use can tell
            c.execute(text("SELECT 1"))
    assert caught.value.connection_invalidated  # marked as a disconnect: dropped, not pooled again
    assert _vote(ann)["created"]
    with store.read() as c:
        assert c.execute(select(func.count()).where(db.votes.c.user_id == user_id)).scalar() == 2

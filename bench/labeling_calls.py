"""Python function calls per vote in the labeling server: a measure of its request path that no
machine noise moves (issue 18).

    python bench/labeling_calls.py [--votes 50] [--db URL]

A vote is what `bench/labeling_load.py` does per vote: GET /annotate (JSON), then POST the vote
(urlencoded, CSRF token in its header), here through an in-process `TestClient`. A profile hook
(`sys.setprofile`, and `threading.setprofile` for the threads started after it: the client's event
loop and the server's worker threads) counts every Python function call, by thread, over `--votes`
votes after a few to warm up. "server" is every thread but the main one (the app, its middleware,
routes and database calls, plus the test client's small ASGI shim); "client" is the main thread
(httpx building and reading the requests). C functions are not counted.

The per-worker session cache is given an hour (`store.SESSION_CACHE_SECONDS`) so that the slow,
hooked run never outlives it: at ~400 votes/s the 5 s cache always hits, and so it does here.
Runs on SQLite (a temporary file) and, with --db, also on that database. Prints one table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from preftune.web import store as store_module
from preftune.web.app import create_app
from preftune.web.assign import assign_items
from preftune.web.store import NewItem, Store

WARMUP = 5
JSON = {"accept": "application/json"}


def vote(client: TestClient, index: int) -> None:
    item = client.get("/annotate", headers=JSON).json()
    form = f"vote_id={uuid.uuid4()}&choice={'left' if index % 3 else 'tie'}"
    headers = {**JSON, "content-type": "application/x-www-form-urlencoded", "x-csrf-token": item["csrf"]}
    answer = client.post(item["vote_url"], content=form, headers=headers)
    assert answer.status_code == 200 and answer.json()["created"], answer.text


def count_calls(url: str, votes: int) -> tuple[float, float]:
    """(server, client) Python calls per vote over `votes` votes on the database at `url`."""
    store_module.SESSION_CACHE_SECONDS = 3600.0
    store = Store(url)
    counts: dict[int, int] = {}
    counting = False

    def hook(_frame, event, _arg):
        if counting and event == "call":
            ident = threading.get_ident()
            counts[ident] = counts.get(ident, 0) + 1

    try:
        project_id = store.create_project(f"calls-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}")
        store.add_items(
            project_id,
            [
                NewItem([{"role": "user", "content": f"Q{i}?"}], f"A{i}", f"B{i}")
                for i in range(WARMUP + votes)
            ],
        )
        _, token = store.create_user("annotator", "annotator", project_id)
        assign_items(store, project_id, seed=0)
        threading.setprofile(hook)  # threads started from here on: the client's loop, worker threads
        sys.setprofile(hook)
        try:
            with TestClient(create_app(store, base_url="http://testserver")) as client:
                assert client.get(f"/login/{token}", follow_redirects=False).status_code == 303
                for index in range(WARMUP):
                    vote(client, index)
                counting = True
                for index in range(votes):
                    vote(client, index)
                counting = False
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    finally:
        store.close()
    main = counts.pop(threading.main_thread().ident, 0)
    return sum(counts.values()) / votes, main / votes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--votes", type=int, default=50)
    parser.add_argument("--db", default=None, help="also count on this database (a PostgreSQL URL)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="preftune-calls-") as folder:
        rows = [("SQLite", *count_calls(f"sqlite:///{Path(folder) / 'calls.db'}", args.votes))]
    if args.db:
        rows.append(
            ("PostgreSQL" if args.db.startswith("postgres") else args.db, *count_calls(args.db, args.votes))
        )
    print(
        f"\nPython calls per vote (GET /annotate JSON + POST vote), {args.votes} votes after {WARMUP} to warm up"
    )
    header = f"{'database':<12} {'server':>8} {'client':>8}"
    print(header)
    print("-" * len(header))
    for name, server, client in rows:
        print(f"{name:<12} {server:>8.0f} {client:>8.0f}")


if __name__ == "__main__":
    main()

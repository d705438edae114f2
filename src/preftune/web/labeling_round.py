"""One labeling round, start to finish, for a program that waits on people (`preftune demo --human`).

    candidate pairs -> a project in the labeling database, one annotator ("you"), their queue
    -> the app served on loopback (uvicorn in a thread) -> the login link
    -> poll the database until every item has a vote -> the votes as `PreferencePair`s

Everything goes through the app's own pieces: `store.py` for the project, items and person,
`assign.py` for the queue (it draws the left/right order), `votes.py` for what was cast, and
`export.py`'s majority rule for the pairs, so a round's labels are exactly what `preftune export`
would write for the same project. Votes are committed one by one as they are cast: an interrupted
round keeps them, and opening the same database again resumes the same project.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import distinct, func, select, update

from preftune.web import db
from preftune.web.assign import assign_items
from preftune.web.export import aggregate
from preftune.web.store import NewItem, Store, StoreError, hash_token, new_token

SOURCE = "preftune-demo"
ANNOTATOR = "you"
GUIDELINE = (
    "Each item is a question a 5-year-old might ask and two answers from the model. Pick the answer "
    "you would rather read to a 5-year-old: simple words, short sentences, and on topic. Say how sure "
    "you are. Choose tie when they are equally good, both bad when neither would do."
)


class LabelingError(StoreError):
    """A round that cannot go on as asked (a database holding other items): one line."""


class LabelingRound:
    """A project of candidate pairs, served for one annotator, and the wait for their votes."""

    def __init__(self, db_url: str, project: str = "demo", seed: int = 0):
        self.store = Store(db_url)
        self.project_name, self.seed = project, seed
        self.project_id: int | None = None
        self.user_id: int | None = None
        self.resumed = False
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # -- the project ------------------------------------------------------------------------------

    def prepare(self, prompts: list[str], candidates: list[list[str]]) -> int:
        """Create the project (or find the one an earlier, interrupted run made); returns its size.

        One item per prompt whose two candidates differ; identical answers are no choice.
        """
        items = [
            NewItem(
                [{"role": "user", "content": prompt}], first, second, source=SOURCE, external_id=f"demo:{i}"
            )
            for i, (prompt, (first, second)) in enumerate(zip(prompts, candidates, strict=True))
            if first.strip() != second.strip()
        ]
        if not items:
            raise LabelingError("every candidate pair is two identical answers: nothing to choose between")
        try:
            found = self.store.project_by_name(self.project_name)
        except StoreError:
            found = None
        if found is None:
            self.project_id = self.store.create_project(self.project_name, guideline=GUIDELINE, overlap=1)
            self.store.add_items(self.project_id, items)
            self.user_id = self.store.create_user(ANNOTATOR, "annotator", self.project_id)[0]
            assign_items(self.store, self.project_id, seed=self.seed)
            return len(items)
        stored = self.store.items(found["id"])
        same = [(i["external_id"], i["prompt"], i["response_a"], i["response_b"]) for i in stored] == [
            (i.external_id, i.prompt, i.response_a, i.response_b) for i in items
        ]
        if not same:
            raise LabelingError(
                f"{self.store.display_url} already holds a project {self.project_name!r} made from other samples "
                "(another --seed or --quick?); use another --out, or delete that database to start over"
            )
        self.project_id, self.resumed = found["id"], True
        people = [u for u in self.store.users(self.project_id) if u["name"] == ANNOTATOR]
        if not people:
            raise LabelingError(f"project {self.project_name!r} has no annotator named {ANNOTATOR!r}")
        self.user_id = people[0]["id"]
        return len(stored)

    def login_link_path(self) -> str:
        """A fresh `/login/TOKEN` path for the annotator (any earlier link stops working)."""
        token = new_token()
        with self.store.write() as c:
            c.execute(
                update(db.users).where(db.users.c.id == self.user_id).values(token_hash=hash_token(token))
            )
        return f"/login/{token}"

    def progress(self) -> tuple[int, int]:
        """(items with a vote, items): a skip counts as an answer, it just yields no pair."""
        with self.store.read() as c:
            total = c.execute(select(func.count()).where(db.items.c.project_id == self.project_id)).scalar()
            voted = c.execute(
                select(func.count(distinct(db.votes.c.item_id))).where(
                    db.votes.c.project_id == self.project_id
                )
            ).scalar()
        return voted, total

    def pairs(self) -> tuple[list, Counter]:
        """The votes as pairs by `export.py`'s majority rule; ties, both-bad and skips are left out."""
        from preftune.web.votes import project_votes

        items = self.store.items(self.project_id)
        return aggregate(items, project_votes(self.store, self.project_id), self.project_name)

    # -- the server -------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 8000) -> str:
        """Serve the app in a thread; returns the annotator's login link. Port taken: any free one."""
        import uvicorn

        from preftune.web.app import create_app, default_base_url

        self._socket = _bind(host, port)
        bound = self._socket.getsockname()[1]
        app = create_app(self.store, base_url=default_base_url(host, bound))
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        # Not the main thread, so uvicorn leaves the signal handlers alone: Ctrl-C reaches `wait`.
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise LabelingError(f"the labeling server did not start on {host}:{bound}")
            time.sleep(0.02)
        return f"http://{host}:{bound}{self.login_link_path()}"

    def wait(
        self,
        poll_seconds: float = 1.0,
        show_progress: bool = True,
        say: Callable[[str], None] = print,
        timeout: float | None = None,
    ) -> None:
        """Block until every item has a vote, with a voted/total bar. Ctrl-C: a message, then it goes on up.
        `timeout` (seconds, None = wait as long as it takes): LabelingError when it runs out."""
        done, total = self.progress()
        bar = _VoteBar(total, done, show_progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        # Ctrl-C must reach this loop as KeyboardInterrupt even if a library imported earlier
        # replaced Python's SIGINT handler (signals can only be set from the main thread).
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main else None
        try:
            while done < total:
                if deadline is not None and time.monotonic() > deadline:
                    bar.close()
                    raise LabelingError(f"{done} of {total} pairs voted after {timeout:g} s; the votes are in "
                                        f"{self.store.display_url}")  # fmt: skip
                time.sleep(poll_seconds)
                done = self.progress()[0]
                bar.update(done)
        except KeyboardInterrupt:
            bar.close()
            say(f"\nstopped waiting at {done} of {total} pairs voted. Every vote cast is saved in "
                f"{self.store.display_url}; run the same command again to carry on where you left off.")  # fmt: skip
            raise
        finally:
            if in_main and previous is not None:  # None: set outside Python, cannot be put back
                signal.signal(signal.SIGINT, previous)
        bar.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=30)
            self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def close(self) -> None:
        self.stop()
        self.store.close()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:  # taken (a `preftune serve` already running): let the OS pick one
        sock.bind((host, 0))
    return sock


class _VoteBar:
    """rich's bar on a terminal; elsewhere a line each time the count moves."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.bar = total, done, None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]votes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True))  # fmt: skip
            self.task = self.bar.add_task("votes", total=total, completed=done)
            self.bar.start()

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        elif done != self.done:
            import sys

            print(f"      votes: {done}/{self.total}", file=sys.stderr, flush=True)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

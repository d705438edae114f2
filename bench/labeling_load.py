"""Load and crash benchmark for the labeling server (issue: 2,000 votes, 0 lost, 0 duplicated).

    python bench/labeling_load.py [--clients 20] [--votes 100] [--db URL] [--workers N]

1. Steady run: `--clients` annotators, each on its own thread and keep-alive connection, cast
   `--votes` votes over HTTP against `python -m preftune.web` (uvicorn) on 127.0.0.1. Each vote is
   GET /annotate (next item, JSON) then POST the vote with a fresh vote id. Afterwards the database
   must hold exactly clients x votes votes: none lost, none twice.
2. Crash run: the same with fresh annotators; once half the votes are acknowledged the server gets
   SIGKILL. With the server dead, every vote that got a 2xx answer must already be in the database.
   The server is restarted; clients resend the vote whose answer they never got, under the same vote
   id, and carry on. At the end: all votes stored exactly once.

With `--workers N` the server runs N uvicorn worker processes; `kill -9` then goes to the whole
process group (parent and workers at once, as a machine losing power would), not the parent alone,
whose orphaned workers would otherwise go on answering.

Loopback only, every loop bounded. Prints one table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from preftune.web import db
from preftune.web.assign import assign_items
from preftune.web.store import NewItem, Store

HOST = "127.0.0.1"
ATTEMPTS = 200  # per request, 0.1 s apart: enough to ride out a restart, bounded all the same
OVERLAP = 2


@dataclass
class Client:
    token: str
    acked: list[tuple[str, float]] = field(default_factory=list)  # (vote id, time of the 2xx)
    vote_ms: list[float] = field(default_factory=list)
    next_ms: list[float] = field(default_factory=list)
    unanswered: int = 0  # votes sent when the server died, resent after the restart
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


STARTED = "Application startup complete."  # uvicorn's line, once per worker process


def start_server(url: str, port: int, log: Path, workers: int = 1) -> subprocess.Popen:
    """Start the server and return once every worker has started: the port accepts connections as
    soon as uvicorn's parent binds it, while workers still import the app, and clients that start
    then would queue on the first worker alone and time its startup, not the server."""
    command = [sys.executable, "-m", "preftune.web", "--db", url, "--host", HOST, "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "info", "--no-access-log"]
    start = log.stat().st_size if log.exists() else 0  # the log is appended to across restarts
    # Its own process group, so that kill -9 reaches every worker (see the module docstring).
    server = subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(600):  # at most a minute
        with log.open("rb") as file:
            file.seek(start)
            started = file.read().decode(errors="replace").count(STARTED)
        if started >= workers:
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    return server
            except OSError:
                pass
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}; see {log}")
        time.sleep(0.1)
    raise SystemExit(f"server did not start {workers} worker(s) on port {port} within a minute; see {log}")


def make_project(store: Store, name: str, clients: int, votes: int) -> list[Client]:
    overlap = min(OVERLAP, clients)
    project_id = store.create_project(name, overlap=overlap)
    n_items = -(-clients * votes // overlap)  # ceil: every queue gets at least `votes` items
    prompts = [
        NewItem([{"role": "user", "content": f"Prompt {i}"}], f"answer a {i}", f"answer b {i}")
        for i in range(n_items)
    ]
    store.add_items(project_id, prompts)
    tokens = [store.create_user(f"annotator-{i:02d}", "annotator", project_id)[1] for i in range(clients)]
    assign_items(store, project_id, seed=0)
    return [Client(token) for token in tokens]


class Session:
    """One annotator's keep-alive connection; reconnects (bounded) when the server goes away."""

    def __init__(self, port: int, client: Client):
        self.port, self.client, self.cookie, self.connection = port, client, "", None
        self.failed_once = False  # set when a request had to be resent after a connection failure

    def request(self, method: str, path: str, body: str = "", headers: dict | None = None):
        """(status, headers, body); retries connection failures, returns None when out of attempts."""
        for _ in range(ATTEMPTS):
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
                all_headers = {"cookie": self.cookie, "accept": "application/json", **(headers or {})}
                self.connection.request(method, path, body=body.encode(), headers=all_headers)
                response = self.connection.getresponse()
                return response.status, response.headers, response.read()
            except (OSError, http.client.HTTPException):
                self.connection = None
                self.failed_once = True
                time.sleep(0.1)
        return None

    def login(self) -> None:
        status, headers, _ = self.request("GET", f"/login/{self.client.token}")
        assert status == 303, status
        self.cookie = headers["set-cookie"].split(";", 1)[0]

    def run(self, votes: int) -> None:
        self.login()
        for _ in range(votes):
            started = time.perf_counter()
            answer = self.request("GET", "/annotate")
            if answer is None or answer[0] != 200:
                self.client.errors.append(f"next: {answer and answer[0]}")
                return
            self.client.next_ms.append(1000 * (time.perf_counter() - started))
            item = json.loads(answer[2])
            if item["item_id"] is None:
                self.client.errors.append("queue ended early")
                return
            vote_id = str(uuid.uuid4())
            form = f"vote_id={vote_id}&choice={'left' if len(self.client.acked) % 3 else 'tie'}"
            headers = {"content-type": "application/x-www-form-urlencoded", "x-csrf-token": item["csrf"]}
            self.failed_once = False
            started = time.perf_counter()
            answer = self.request("POST", item["vote_url"], form, headers)
            if answer is None or not 200 <= answer[0] < 300:
                self.client.errors.append(f"vote: {answer and answer[0]}")
                return
            self.client.unanswered += self.failed_once
            if not self.failed_once:
                self.client.vote_ms.append(1000 * (time.perf_counter() - started))
            self.client.acked.append((vote_id, time.time()))


def run_clients(port: int, clients: list[Client], votes: int) -> float:
    threads = [threading.Thread(target=Session(port, c).run, args=(votes,)) for c in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    return time.perf_counter() - started


def stored_votes(url: str, project: str) -> tuple[int, set[str], int]:
    """(rows, distinct vote ids, (user, item) pairs voted more than once) for a project."""
    store = Store(url)
    try:
        project_id = store.project_by_name(project)["id"]
        v = db.votes
        with store.read() as c:
            uids = [r[0] for r in c.execute(select(v.c.vote_uid).where(v.c.project_id == project_id))]
            doubled = c.execute(
                select(func.count()).select_from(
                    select(v.c.user_id, v.c.item_id)
                    .where(v.c.project_id == project_id)
                    .group_by(v.c.user_id, v.c.item_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            ).scalar()
    finally:
        store.close()
    return len(uids), set(uids), doubled


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--votes", type=int, default=100)
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="preftune-load-"))
    url = args.db or f"sqlite:///{folder / 'load.db'}"
    log = folder / "server.log"
    setup = Store(url)
    stamp = time.strftime("%H%M%S")
    steady_clients = make_project(setup, f"steady-{stamp}", args.clients, args.votes)
    crash_clients = make_project(setup, f"crash-{stamp}", args.clients, args.votes)
    setup.close()
    expected = args.clients * args.votes
    port = free_port()
    rows = []

    server = start_server(url, port, log, args.workers)
    seconds = run_clients(port, steady_clients, args.votes)
    rows.append(("steady", steady_clients, seconds, stored_votes(url, f"steady-{stamp}")))

    # Crash run: a watcher kills the server once half the votes are acknowledged.
    kill = {}

    def watcher() -> None:
        for _ in range(60_000):  # at most 10 minutes
            if sum(len(c.acked) for c in crash_clients) >= expected // 2:
                kill["at"] = time.time()
                os.killpg(server.pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    watch = threading.Thread(target=watcher)
    runner = threading.Thread(
        target=lambda: kill.setdefault("seconds", run_clients(port, crash_clients, args.votes))
    )
    watch.start()
    runner.start()
    watch.join()
    if "at" not in kill:
        raise SystemExit("the crash run never reached half its votes; see " + str(log))
    server.wait(timeout=30)
    acked_before = {uid for c in crash_clients for uid, when in c.acked if when <= kill["at"]}
    _, present, _ = stored_votes(url, f"crash-{stamp}")
    missing_at_kill = len(acked_before - present)
    restart = time.perf_counter()
    server = start_server(url, port, log, args.workers)
    restart_seconds = time.perf_counter() - restart
    runner.join()
    rows.append(("kill -9", crash_clients, kill["seconds"], stored_votes(url, f"crash-{stamp}")))
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)

    print(
        f"\nlabeling load: {args.clients} clients x {args.votes} votes, uvicorn on {HOST}, "
        f"{args.workers} worker process{'es' if args.workers > 1 else ''}, "
        f"{'PostgreSQL' if url.startswith('postgres') else 'SQLite (WAL)'}, {os.cpu_count()} CPUs"
    )
    header = f"{'run':<8} {'2xx':>5} {'stored':>6} {'lost':>4} {'dup':>3} {'errors':>6} {'vote p50':>8} {'vote p95':>8} {'next p50':>8} {'votes/s':>7}"
    print(header)
    print("-" * len(header))
    for name, clients, seconds, (count, uids, doubled) in rows:
        acked = {uid for c in clients for uid, _ in c.acked}
        vote_ms = [ms for c in clients for ms in c.vote_ms]
        next_ms = [ms for c in clients for ms in c.next_ms]
        errors = sum(len(c.errors) for c in clients)
        print(
            f"{name:<8} {len(acked):>5} {count:>6} {len(acked - uids):>4} {count - len(uids) + doubled:>3} {errors:>6} "
            f"{percentile(vote_ms, 50):>6.1f}ms {percentile(vote_ms, 95):>6.1f}ms {percentile(next_ms, 50):>6.1f}ms "
            f"{count / seconds:>7.0f}"
        )
    unanswered = sum(c.unanswered for c in crash_clients)
    print(
        f"kill -9 after {len(acked_before)} acknowledged votes: {len(acked_before) - missing_at_kill}/{len(acked_before)} "
        f"already stored while the server was dead; {unanswered} votes sent into the crash were resent under the "
        f"same id; restart took {restart_seconds:.1f}s. Expected {expected} stored per run."
    )
    ok = all(count == expected and not doubled for *_, (count, _, doubled) in rows) and missing_at_kill == 0
    if ok:
        shutil.rmtree(folder, ignore_errors=True)
        print("PASS")
    else:
        print(f"FAIL (database and server log kept in {folder})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

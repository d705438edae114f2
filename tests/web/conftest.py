"""Fixtures for the labeling app: stores on SQLite and on a real PostgreSQL, clients, sample projects.

PostgreSQL: set PREFTUNE_TEST_POSTGRES=postgresql://... to use a server you run; otherwise the
fixture starts Debian's cluster (`pg_ctlcluster`) on loopback, creates a throwaway role and
database, and stops the cluster at the end of the session if it started it. When that is not
possible the PostgreSQL variants are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import time

import pytest
from fastapi.testclient import TestClient

from preftune.web.app import create_app
from preftune.web.security import COOKIE
from preftune.web.store import NewItem, Store

# Per test process, so two sessions on one machine never drop each other's database.
PG_ROLE = f"preftune_test_{os.getpid()}"


def _as_postgres(sql: str, port: str) -> subprocess.CompletedProcess:
    command = ["psql", "-v", "ON_ERROR_STOP=1", "-q", "-p", port, "-d", "postgres", "-c", sql]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _start_postgres() -> tuple[str | None, str, tuple[str, str] | None]:
    """(url or None, reason when None, (version, cluster) if this call started it)."""
    if not shutil.which("pg_lsclusters") or not shutil.which("psql"):
        return None, "Debian's postgresql package is not installed (apt-get install -y postgresql)", None
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30)
    rows = [line.split() for line in listing.stdout.splitlines() if line.strip()]
    if not rows:
        return None, "no PostgreSQL cluster exists (pg_createcluster)", None
    version, cluster, port, status = rows[0][:4]
    started = None
    if status != "online":
        start = subprocess.run(
            ["pg_ctlcluster", version, cluster, "start"], capture_output=True, text=True, timeout=90
        )
        if start.returncode != 0:
            return None, f"pg_ctlcluster {version} {cluster} start failed: {start.stderr.strip()[:300]}", None
        started = (version, cluster)
    password = secrets.token_hex(12)
    for sql in (
        f"DROP DATABASE IF EXISTS {PG_ROLE}",
        f"DROP ROLE IF EXISTS {PG_ROLE}",
        f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{password}'",
        f"CREATE DATABASE {PG_ROLE} OWNER {PG_ROLE}",
    ):
        done = _as_postgres(sql, port)
        if done.returncode != 0:
            return None, f"could not prepare the test database ({sql}): {done.stderr.strip()[:300]}", started
    return f"postgresql://{PG_ROLE}:{password}@127.0.0.1:{port}/{PG_ROLE}", "", started


@pytest.fixture(scope="session")
def postgres_url():
    if os.environ.get("PREFTUNE_TEST_POSTGRES"):
        yield os.environ["PREFTUNE_TEST_POSTGRES"]
        return
    url, reason, started = _start_postgres()
    try:
        if url is None:
            pytest.skip(f"PostgreSQL tests skipped: {reason}")
        yield url
    finally:
        if url is not None:
            port = url.rsplit(":", 1)[1].split("/")[0]
            _as_postgres(f"DROP DATABASE IF EXISTS {PG_ROLE} WITH (FORCE)", port)
            _as_postgres(f"DROP ROLE IF EXISTS {PG_ROLE}", port)
        if started is not None:
            subprocess.run(["pg_ctlcluster", *started, "stop"], capture_output=True, timeout=90)


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine

    from preftune.web.db import normalize_url

    engine = create_engine(normalize_url(url))
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test on both backends, each time on an empty database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def store(db_url):
    opened = Store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'labels.db'}")
    yield opened
    opened.close()


def sample_items(n: int, prefix: str = "Q") -> list[NewItem]:
    return [
        NewItem(
            [{"role": "user", "content": f"{prefix}{i}?"}], f"{prefix}{i} answer A", f"{prefix}{i} answer B"
        )
        for i in range(n)
    ]


class Site:
    """An app over a fresh SQLite store plus helpers to log people in as separate clients."""

    def __init__(self, store: Store):
        self.store = store
        self.app = create_app(store, base_url="http://testserver")
        self.clients: list[TestClient] = []

    def client(self, token: str | None = None) -> TestClient:
        client = TestClient(self.app)
        self.clients.append(client)
        if token is not None:
            response = client.get(f"/login/{token}", follow_redirects=False)
            assert response.status_code == 303, response.text
        return client

    @staticmethod
    def csrf(client: TestClient) -> str:
        """The CSRF token of the client's current session (as the page would embed it)."""
        return client.app.state.store.session(client.cookies.get(COOKIE))["csrf"]

    def admin(self) -> TestClient:
        return self.client(self.store.new_admin_token())

    def annotator(self, project_id: int, name: str) -> tuple[TestClient, int]:
        user_id, token = self.store.create_user(name, "annotator", project_id)
        return self.client(token), user_id


@pytest.fixture
def make_items():
    """`make_items(n, prefix="Q")`: n ready items with prompts Q0?, Q1?, ... and two answers each."""
    return sample_items


def _site_over(store: Store):
    made = Site(store)
    yield made
    for client in made.clients:
        client.close()


@pytest.fixture
def any_site(store):
    """A `Site` over SQLite and, in a second run of the test, over PostgreSQL."""
    yield from _site_over(store)


@pytest.fixture
def site(sqlite_store):
    yield from _site_over(sqlite_store)


# ---- browser tests: Debian's Chromium driven by Playwright, against a real uvicorn -------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def live(tmp_path):
    """(base URL, store) of a uvicorn server on a free loopback port, stopped after the test.
    Its dashboard shows the (empty) folder tmp_path/runs."""
    import uvicorn

    store = Store(f"sqlite:///{tmp_path / 'live.db'}")
    (tmp_path / "runs").mkdir()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    app = create_app(store, runs=tmp_path / "runs", base_url=base)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield base, store
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()
    store.close()

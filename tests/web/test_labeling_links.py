"""Login links: kept out of logs, expiring, revocable, replaceable; people removable; admin-link."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
from sqlalchemy import select, update
from typer.testing import CliRunner

from preftune.cli import app as cli
from preftune.web import db
from preftune.web.assign import assign_items
from preftune.web.store import Store
from preftune.web.votes import record_vote


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serving(url: str, *options: str):
    """`preftune serve` in a subprocess: yields {"port", "token"}; "log" holds its output after."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "preftune", "serve", "--db", url, "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    running = {"port": port}
    try:
        first = server.stdout.readline()
        running["token"] = first.strip().rsplit("/", 1)[1]
        assert len(running["token"]) > 30, first
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/favicon.ico", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield running
    finally:
        server.send_signal(signal.SIGINT)
        running["log"] = server.communicate(timeout=30)[0]


def test_serve_keeps_login_tokens_out_of_its_access_log(tmp_path):
    with _serving(f"sqlite:///{tmp_path / 'log.db'}") as server:
        token, port = server["token"], server["port"]
        assert httpx.get(f"http://127.0.0.1:{port}/login/{token}", timeout=5).status_code == 303
        # A wrong token too: whatever follows /login/ is a secret to someone.
        assert httpx.get(f"http://127.0.0.1:{port}/login/not-a-real-token-but-secret").status_code == 403
    log = server["log"].split("\n", 1)[1]
    assert '"GET /login/[redacted] HTTP/1.1" 303' in log, log
    assert '"GET /login/[redacted] HTTP/1.1" 403' in log, log
    assert token not in log and "not-a-real-token" not in log


def test_serve_with_several_workers_shares_sessions_through_the_database(tmp_path):
    with _serving(f"sqlite:///{tmp_path / 'workers.db'}", "--workers", "3") as server:
        base = f"http://127.0.0.1:{server['port']}"
        login = httpx.get(f"{base}/login/{server['token']}")
        cookie = {"preftune_session": login.cookies["preftune_session"]}
        # A fresh connection each time: the kernel spreads them over the workers.
        answers = [httpx.get(f"{base}/admin", cookies=cookie).status_code for _ in range(30)]
    assert answers == [200] * 30
    workers = set(re.findall(r"Started server process \[(\d+)\]", server["log"]))
    assert len(workers) == 3, server["log"]
    # Workers log through the same filter; the link was printed once, by the parent, before them.
    assert '"GET /login/[redacted] HTTP/1.1" 303' in server["log"] and server["token"] not in server["log"]


def _set_expiry(store: Store, user_id: int, when: float) -> None:
    with store.write() as c:
        c.execute(update(db.users).where(db.users.c.id == user_id).values(token_expires_at=when))


def test_a_link_can_expire_and_says_so(site):
    project_id = site.store.create_project("p")
    admin = site.admin()
    page = admin.post(
        f"/admin/projects/{project_id}/annotators",
        data={"name": "ann", "expires_days": "2", "csrf_token": site.csrf(admin)},
    )
    assert page.status_code == 200 and "stops working after 2.0 days" in page.text
    user_id = site.store.users(project_id)[0]["id"]
    expires = site.store.users(project_id)[0]["token_expires_at"]
    assert abs(expires - (time.time() + 2 * 86400)) < 60
    token = page.text.split("/login/")[1].split('"')[0]
    assert site.client(token).get("/annotate").status_code == 200
    _set_expiry(site.store, user_id, time.time() - 1)
    refused = site.client().get(f"/login/{token}")
    assert refused.status_code == 403 and "This login link expired on" in refused.text
    # A lifetime that is not a number of days is refused with a message.
    bad = admin.post(
        f"/admin/projects/{project_id}/annotators",
        data={"name": "other", "expires_days": "soon", "csrf_token": site.csrf(admin)},
        headers={"accept": "application/json"},
    )
    assert bad.status_code == 400 and "number of days" in bad.json()["detail"]


def test_admin_revokes_a_link_and_replaces_it(site):
    project_id = site.store.create_project("p")
    admin = site.admin()
    ann, user_id = site.annotator(project_id, "ann")
    token_before = site.store.new_link(user_id)  # the link the annotator holds
    assert ann.get("/annotate").status_code == 200
    revoked = admin.post(
        f"/admin/projects/{project_id}/annotators/{user_id}/revoke", data={"csrf_token": site.csrf(admin)}
    )
    assert revoked.status_code == 200 and "no longer works" in revoked.text
    assert ann.get("/annotate").status_code == 401  # the open session ended with the link
    assert site.client().get(f"/login/{token_before}").status_code == 403
    assert "revoked" in admin.get(f"/admin/projects/{project_id}").text
    fresh = admin.post(
        f"/admin/projects/{project_id}/annotators/{user_id}/link", data={"csrf_token": site.csrf(admin)}
    )
    token = fresh.text.split("/login/")[1].split('"')[0]
    assert site.client(token).get("/annotate").status_code == 200
    # An annotator of another project is not reachable through this one's URL.
    other = site.store.create_project("q")
    _ann2, other_id = site.annotator(other, "x")
    wrong = admin.post(
        f"/admin/projects/{project_id}/annotators/{other_id}/revoke", data={"csrf_token": site.csrf(admin)}
    )
    assert wrong.status_code == 404


def test_admin_removes_an_annotator_and_their_items_go_to_others(site, make_items):
    store = site.store
    project_id = store.create_project("p", overlap=1)
    store.add_items(project_id, make_items(4))
    admin = site.admin()
    leaver, leaver_id = site.annotator(project_id, "leaver")
    _stayer, stayer_id = site.annotator(project_id, "stayer")
    assign_items(store, project_id, seed=1)
    with store.read() as c:
        mine = c.execute(
            select(db.assignments.c.item_id).where(db.assignments.c.user_id == leaver_id)
        ).scalars().all()
    record_vote(store, leaver_id, mine[0], "vote-kept-1", "a")
    answer = admin.post(
        f"/admin/projects/{project_id}/annotators/{leaver_id}/remove", data={"csrf_token": site.csrf(admin)}
    )
    assert f"\u2068leaver\u2069 removed: logged out, {len(mine) - 1} unvoted items freed" in answer.text
    assert leaver.get("/annotate").status_code == 401
    assert [u["name"] for u in store.users(project_id)] == ["stayer"]
    assert [u["name"] for u in store.users(project_id, removed=True)] == ["leaver", "stayer"]
    with store.read() as c:
        kept = c.execute(select(db.votes.c.item_id).where(db.votes.c.user_id == leaver_id)).scalars().all()
    assert kept == [mine[0]]
    report = assign_items(store, project_id, seed=2)
    assert report.created == len(mine) - 1 and report.per_annotator == {"stayer": 3}
    assert stayer_id in {u["id"] for u in store.users(project_id)}


def test_admin_link_command_prints_a_new_link_and_shuts_out_the_old_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    store = Store(url)
    old = store.new_admin_token()
    admin_id = store.user_by_token(old)["id"]
    session, _csrf = store.create_session(admin_id)
    result = CliRunner().invoke(cli, ["admin-link", "--db", url, "--base-url", "https://label.example.org/"])
    assert result.exit_code == 0, result.output
    link = result.output.strip()
    assert link.startswith("https://label.example.org/login/")
    new = link.rsplit("/", 1)[1]
    assert store.user_by_token(new)["id"] == admin_id
    assert store.user_by_token(old) is None and store.session(session) is None
    bad = CliRunner().invoke(cli, ["admin-link", "--db", url, "--base-url", "label.example.org"])
    assert bad.exit_code == 2 and "--base-url label.example.org: give the address" in bad.output
    missing = CliRunner().invoke(cli, ["admin-link", "--db", f"sqlite:///{tmp_path / 'no' / 'x.db'}"])
    assert missing.exit_code == 2 and "cannot open the database" in missing.output
    store.close()


def test_a_login_link_does_not_silently_replace_an_open_session(site):
    project_id = site.store.create_project("p")
    victim, victim_id = site.annotator(project_id, "victim")
    _mallory_id, mallory_token = site.store.create_user("mallory", "annotator", project_id)
    cookie = victim.cookies.get("preftune_session")
    # Another site sends the logged-in victim to the attacker's link.
    page = victim.get(f"/login/{mallory_token}", follow_redirects=False)
    assert page.status_code == 200 and "Switch account?" in page.text
    assert "logged in as <bdi>victim</bdi>" in page.text
    assert site.store.session(cookie)["user_id"] == victim_id  # nothing changed yet
    # A cross-site POST cannot carry the page's CSRF token.
    forged = victim.post(f"/login/{mallory_token}", data={}, follow_redirects=False)
    assert forged.status_code == 403 and site.store.session(cookie)["user_id"] == victim_id
    # The person's own click switches.
    switched = victim.post(
        f"/login/{mallory_token}", data={"csrf_token": site.csrf(victim)}, follow_redirects=False
    )
    assert switched.status_code == 303 and site.store.session(cookie) is None
    assert site.store.session(victim.cookies.get("preftune_session"))["name"] == "mallory"
    # One's own link again just goes home.
    again = victim.get(f"/login/{mallory_token}", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/annotate"

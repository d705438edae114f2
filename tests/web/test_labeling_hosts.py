"""Invite links come from the configured base URL; requests for unknown Host names are refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from preftune.web.app import check_base_url, create_app, startup_lines


def _invite(client: TestClient, store, project_id: int, name: str, host: str):
    csrf = store.session(client.cookies.get("preftune_session"))["csrf"]
    return client.post(
        f"/admin/projects/{project_id}/annotators",
        data={"name": name, "csrf_token": csrf},
        headers={"host": host},
    )


def test_invite_links_use_the_base_url_whatever_the_host_header(sqlite_store):
    app = create_app(sqlite_store, base_url="https://label.example.org/")
    client = TestClient(app, base_url="https://label.example.org")
    project_id = sqlite_store.create_project("p")
    assert client.get(f"/login/{sqlite_store.new_admin_token()}").status_code == 200
    page = _invite(client, sqlite_store, project_id, "ann", "label.example.org")
    assert 'value="https://label.example.org/login/' in page.text
    # Reached by its IP address (a proxy, or a server bound to 0.0.0.0): the link stays the same.
    page = _invite(client, sqlite_store, project_id, "bob", "10.1.2.3:8000")
    assert page.status_code == 200 and 'value="https://label.example.org/login/' in page.text
    assert "10.1.2.3" not in page.text


@pytest.mark.parametrize("host", ["evil.example", "label.example.org.evil.example", "attacker.test:8000", ""])
def test_unknown_hosts_are_refused_which_closes_dns_rebinding(sqlite_store, host):
    app = create_app(sqlite_store, base_url="http://label.example.org:8000")
    client = TestClient(app, base_url="http://label.example.org:8000")
    project_id = sqlite_store.create_project("p")
    assert client.get(f"/login/{sqlite_store.new_admin_token()}").status_code == 200
    # A rebinding page reads with the victim's cookies under its own name: refused before any view.
    refused = client.get("/admin", headers={"host": host})
    assert refused.status_code == 400 and "unknown host" in refused.text
    assert "label.example.org" in refused.text and "content-security-policy" in refused.headers
    answer = _invite(client, sqlite_store, project_id, "ann", host)
    assert answer.status_code == 400 and sqlite_store.users(project_id) == []
    for good in ("label.example.org", "LABEL.example.org:8000", "localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/admin", headers={"host": good}).status_code == 200, good


def test_base_url_is_checked_and_shown_at_start(sqlite_store):
    with pytest.raises(ValueError, match="--base-url label.example.org: give the address"):
        check_base_url("label.example.org")
    with pytest.raises(ValueError, match="no path"):
        check_base_url("https://example.org/label")
    lines = startup_lines(sqlite_store, "0.0.0.0", 8000, "https://label.example.org")
    assert "people open" not in lines[0]  # the base URL was given: no advice to give it
    assert lines[1].startswith("Admin login (shown once, keep it secret): https://label.example.org/login/")
    warned = startup_lines(sqlite_store, "0.0.0.0", 8000)
    assert "Give --base-url" in warned[0] and "http://127.0.0.1:8000/" in warned[1]


def test_pages_and_downloads_are_never_cached_but_static_files_may_be(site, make_items):
    project_id = site.store.create_project("p")
    admin = site.admin()
    csrf = {"csrf_token": site.csrf(admin)}
    invite = admin.post(f"/admin/projects/{project_id}/annotators", data={"name": "ann", **csrf})
    assert invite.status_code == 200 and invite.headers["cache-control"] == "no-store"
    download = admin.get(f"/admin/projects/{project_id}/export.jsonl")
    assert download.status_code == 200 and download.headers["cache-control"] == "no-store"
    for path in ("/admin", f"/admin/projects/{project_id}", "/nowhere"):
        assert admin.get(path).headers["cache-control"] == "no-store", path
    assert "no-store" not in admin.get("/static/app.css").headers.get("cache-control", "")


def _one_run(tmp_path):
    root = tmp_path / "private" / "place" / "runs"
    (root / "dpo-1").mkdir(parents=True)
    (root / "dpo-1" / "config.yaml").write_text("loss_type: sigmoid\n")
    (root / "dpo-1" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    (root / "dpo-1" / "samples.jsonl").write_text('{"step": 1, "prompt": "secret prompt", "completion": "x"}\n')
    return root


def test_runs_pages_name_runs_relative_to_the_runs_folder(tmp_path, sqlite_store):
    client = TestClient(create_app(sqlite_store, runs=_one_run(tmp_path), base_url="http://testserver"))
    page = client.get("/runs")
    assert page.status_code == 200 and 'href="/runs/dpo-1"' in page.text
    assert str(tmp_path) not in page.text and "private" not in page.text
    assert "<code>runs</code>" in page.text
    assert str(tmp_path) not in client.get("/runs/dpo-1").text


def test_runs_need_the_admin_login_off_loopback(tmp_path, sqlite_store, monkeypatch):
    import uvicorn

    from preftune.web.app import serve

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    root = _one_run(tmp_path)
    serve(sqlite_store.url, host="0.0.0.0", port=8765, runs=root, base_url="http://testserver")
    assert served["host"] == "0.0.0.0"
    client = TestClient(served["app"])
    for path in ("/runs", "/runs/dpo-1", "/runs/dpo-1/data", "/runs/compare?run=dpo-1"):
        assert client.get(path).status_code == 401, path
    project_id = sqlite_store.create_project("p")
    _user_id, token = sqlite_store.create_user("ann", "annotator", project_id)
    client.get(f"/login/{token}")
    assert client.get("/runs/dpo-1/data").status_code == 403
    admin = TestClient(served["app"])
    admin.get(f"/login/{sqlite_store.new_admin_token()}")
    data = admin.get("/runs/dpo-1/data")
    assert data.status_code == 200 and data.json()["samples"][0]["prompt"] == "secret prompt"
    assert client.get("/playground").status_code == 200  # the playground holds nothing private
    # On loopback the dashboard stays open, as before.
    serve(sqlite_store.url, host="127.0.0.1", port=8765, runs=root, base_url="http://testserver")
    assert TestClient(served["app"]).get("/runs/dpo-1/data").status_code == 200

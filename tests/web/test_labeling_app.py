"""Start-up, navigation, imports and the pages' rendering rules."""

from __future__ import annotations

import sys

import pytest

from preftune.web.app import is_loopback, startup_lines
from preftune.web.render import markdown_to_html


def test_first_start_prints_an_admin_link_once_and_warns_off_loopback(sqlite_store):
    first = startup_lines(sqlite_store, "127.0.0.1", 8123)
    assert len(first) == 1 and first[0].startswith(
        "Admin login (shown once, keep it secret): http://127.0.0.1:8123/login/"
    )
    token = first[0].rsplit("/", 1)[1]
    assert sqlite_store.user_by_token(token)["role"] == "admin"
    again = startup_lines(sqlite_store, "0.0.0.0", 8123)
    assert again[0].startswith("WARNING: binding to 0.0.0.0 makes the labeling server reachable")
    assert "login/" not in again[1] and "admin link was printed at first start" in again[1]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_markdown_guideline_is_rendered_without_raw_html_or_script_links():
    html = str(
        markdown_to_html("# Rules\n\nPrefer **short** answers. <b onclick=x>hi</b> [go](javascript:alert(1))")
    )
    assert "<h1>Rules</h1>" in html and "<strong>short</strong>" in html
    assert "<b onclick" not in html and "&lt;b onclick=x&gt;" in html
    assert 'href="javascript' not in html


def test_web_layer_does_not_import_torch():
    import subprocess

    code = "import sys, preftune.web.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_home_sends_each_role_to_its_page_and_logout_ends_the_session(site):
    admin = site.admin()
    assert admin.get("/", follow_redirects=False).headers["location"] == "/admin"
    project_id = site.store.create_project("p", "Read **both** answers.")
    client, _ = site.annotator(project_id, "ann")
    assert client.get("/", follow_redirects=False).headers["location"] == "/annotate"
    assert "<strong>both</strong>" in client.get("/annotate/guidelines").text
    assert "all 0 items assigned to you: 0 voted." in client.get("/annotate").text
    response = client.post("/logout", data={"csrf_token": site.csrf(client)}, follow_redirects=False)
    assert response.status_code == 303
    assert client.get("/annotate").status_code == 401


def test_prompt_import_and_item_pages(site, make_items):
    admin = site.admin()
    project_id = site.store.create_project("p")
    text = "Why is the sky blue?\nHow do magnets work?\n"
    response = admin.post(
        f"/admin/projects/{project_id}/prompts",
        data={"csrf_token": site.csrf(admin)},
        files={"file": ("prompts.txt", text.encode(), "text/plain")},
    )
    assert "2 prompts imported" in response.text
    assert site.store.item_counts(project_id)["pending"] == 2
    bad = admin.post(
        f"/admin/projects/{project_id}/prompts",
        data={"csrf_token": site.csrf(admin)},
        files={"file": ("mine.jsonl", b'{"prompt": "ok"}\n{not json\n', "application/jsonl")},
    )
    assert bad.status_code == 400 and "mine.jsonl:2:" in bad.text and "upload" not in bad.json()["detail"]
    site.store.add_items(project_id, make_items(1))
    item_id = site.store.items(project_id, pending=False)[0]["id"]
    page = admin.post(
        f"/admin/projects/{project_id}/items/{item_id}/gold",
        data={"gold": "b", "csrf_token": site.csrf(admin)},
    )
    assert page.status_code == 200 and "gold: b" in page.text
    assert site.store.item(item_id)["gold"] == "b"
    assert admin.get("/admin/projects/999").status_code == 404
    quality = admin.get(f"/admin/projects/{project_id}/quality")
    assert quality.status_code == 200 and "No votes yet" in quality.text


def test_settings_and_invites_are_validated(site):
    admin = site.admin()
    project_id = site.store.create_project("p")
    data = {"guideline": "g", "overlap": 0, "gold_rate": 0.1, "csrf_token": site.csrf(admin)}
    response = admin.post(f"/admin/projects/{project_id}/settings", data=data)
    assert response.status_code == 400 and "overlap must be between 1 and 100" in response.json()["detail"]
    data["overlap"] = 3
    assert admin.post(f"/admin/projects/{project_id}/settings", data=data).status_code == 200
    assert site.store.project(project_id)["overlap"] == 3
    invite = {"name": "judge:me", "csrf_token": site.csrf(admin)}
    assert admin.post(f"/admin/projects/{project_id}/annotators", data=invite).status_code == 400
    invite["name"] = "ann"
    assert admin.post(f"/admin/projects/{project_id}/annotators", data=invite).status_code == 200
    assert admin.post(f"/admin/projects/{project_id}/annotators", data=invite).status_code == 400


def test_export_download_parameters_are_checked(site):
    admin = site.admin()
    project_id = site.store.create_project("p")
    assert admin.get(f"/admin/projects/{project_id}/export.jsonl?drop=wins").status_code == 400
    assert admin.get(f"/admin/projects/{project_id}/export.jsonl?min_votes=0").status_code == 400
    empty = admin.get(f"/admin/projects/{project_id}/export.jsonl")
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["content-disposition"] == 'attachment; filename="p.jsonl"'


def test_breakable_escapes_and_only_splits_very_long_runs():
    from preftune.web.render import LONG_WORD, WORD_CHUNK, breakable

    assert str(breakable("a <b> & c")) == "a &lt;b&gt; &amp; c"
    normal = "word " * 50
    assert str(breakable(normal)) == normal  # ordinary words wrap as usual
    hostile = "<script>" * LONG_WORD
    out = str(breakable(f"x {hostile} y"))
    assert "<script>" not in out and out.count("<wbr>") == len(hostile) // WORD_CHUNK - (len(hostile) % WORD_CHUNK == 0)
    assert out.replace("<wbr>", "") == "x " + hostile.replace("<", "&lt;").replace(">", "&gt;") + " y"

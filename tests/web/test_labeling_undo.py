"""Undo of the last vote, skips apart from votes, error pages with a way on, the ended-session
answer, and the favicon."""

from __future__ import annotations

import re
import time

from sqlalchemy import select, update

from preftune.web import db
from preftune.web.assign import assign_items
from preftune.web.votes import UNDO_SECONDS, record_vote


def _queue(store, user_id):
    a = db.assignments
    with store.read() as c:
        rows = c.execute(select(a.c.item_id, a.c.done).where(a.c.user_id == user_id).order_by(a.c.position))
        return [tuple(r) for r in rows]


def _vote(site, client, item_id, choice, vote_id):
    return client.post(
        f"/annotate/items/{item_id}/vote",
        data={"csrf_token": site.csrf(client), "vote_id": vote_id, "choice": choice},
        follow_redirects=False,
    )


def test_undo_takes_back_the_last_vote_and_shows_its_item_again(site, make_items):
    store = site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(3))
    ann, user_id = site.annotator(project_id, "ann")
    other, other_id = site.annotator(project_id, "other")
    store.update_project(project_id, overlap=2)
    assign_items(store, project_id, seed=0)
    (first, _), (second, _), _third = _queue(store, user_id)
    assert _vote(site, ann, first, "left", "vote-u-0001").headers["location"] == "/annotate?voted=1"
    assert _vote(site, ann, second, "skip", "vote-u-0002").status_code == 303
    other_item = _queue(store, other_id)[0][0]
    record_vote(store, other_id, other_item, "vote-o-0001", "a")  # someone else's, later
    page = ann.get("/annotate?voted=1").text
    assert "Vote recorded." in page and 'id="undo"' in page
    undone = ann.post("/annotate/undo", data={"csrf_token": site.csrf(ann)}, follow_redirects=False)
    assert undone.status_code == 303 and undone.headers["location"].startswith(f"/annotate/items/{second}?notice=")
    assert "taken back" in ann.get(undone.headers["location"]).text
    assert _queue(store, user_id)[1] == (second, False)
    assert ann.get("/annotate", headers={"accept": "application/json"}).json()["item_id"] == second
    assert [v["vote_uid"] for v in _votes(store)] == ["vote-u-0001", "vote-o-0001"]
    # Again: one further step back; the other person's vote is never touched.
    ann.post("/annotate/undo", data={"csrf_token": site.csrf(ann)})
    assert [v["vote_uid"] for v in _votes(store)] == ["vote-o-0001"]
    refused = ann.post("/annotate/undo", data={"csrf_token": site.csrf(ann)}, headers={"accept": "application/json"})
    assert refused.status_code == 400 and "no vote to undo" in refused.json()["detail"]
    # Past the window, a vote stays.
    _vote(site, ann, first, "right", "vote-u-0003")
    with store.write() as c:
        c.execute(update(db.votes).values(created_at=time.time() - UNDO_SECONDS - 1))
    assert "no vote to undo" in ann.post(
        "/annotate/undo", data={"csrf_token": site.csrf(ann)}, headers={"accept": "application/json"}
    ).json()["detail"]
    assert 'id="undo"' not in ann.get("/annotate").text
    assert other.get("/annotate").status_code == 200


def _votes(store):
    with store.read() as c:
        return [dict(r._mapping) for r in c.execute(select(db.votes).order_by(db.votes.c.id))]


def test_skips_are_not_votes_and_admin_and_quality_pages_agree(site, make_items):
    store = site.store
    project_id = store.create_project("p", overlap=2)
    store.add_items(project_id, make_items(6))
    ann, ann_id = site.annotator(project_id, "ann")
    bob, bob_id = site.annotator(project_id, "bob")
    assign_items(store, project_id, seed=0)
    for n, (item_id, _done) in enumerate(_queue(store, ann_id)):
        _vote(site, ann, item_id, "skip" if n == 2 else "left", f"vote-a-{n:04}")
    for n, (item_id, _done) in enumerate(_queue(store, bob_id)):
        _vote(site, bob, item_id, "right", f"vote-b-{n:04}")
    done = ann.get("/annotate").text
    assert "all 6 items assigned to you: 5 voted, 1 skipped." in done
    assert "voted on all 6" not in done
    admin = site.admin()
    project_page = admin.get(f"/admin/projects/{project_id}").text
    quality_page = admin.get(f"/admin/projects/{project_id}/quality").text
    counted = [re.search(r'id="vote-count">(\d+) votes<', page).group(1) for page in (project_page, quality_page)]
    assert counted == ["11", "11"]
    assert "5 voted, 1 skipped / 6" in project_page and "6 voted / 6" in project_page
    assert "and 1 skipped" in quality_page


def test_an_ended_session_asks_to_log_in_again_instead_of_a_csrf_alarm(site, make_items):
    store = site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(1))
    ann, user_id = site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    item_id = _queue(store, user_id)[0][0]
    csrf = site.csrf(ann)
    with store.write() as c:
        c.execute(update(db.sessions).values(expires_at=time.time() - 1))
    answer = ann.post(
        f"/annotate/items/{item_id}/vote",
        data={"csrf_token": csrf, "vote_id": "vote-e-0001", "choice": "left"},
        headers={"accept": "text/html"},
    )
    assert answer.status_code == 401 and "CSRF" not in answer.text
    assert "Your session has ended: open your login link again." in answer.text
    assert "Your vote is kept in this browser" in answer.text


def test_error_pages_offer_a_way_on(site):
    admin = site.admin()
    project_id = site.store.create_project("p")
    html = {"accept": "text/html"}
    for path, link in (
        (f"/admin/projects/{project_id}/items/999999/gold", f'<a href="/admin/projects/{project_id}">Back to the project</a>'),
        ("/admin/projects/999999", '<a href="/admin">Back to the projects</a>'),
        ("/nowhere", '<a href="/">Go to the start page</a>'),
        ("/runs/nope", '<a href="/runs">Back to the runs</a>'),
    ):  # fmt: skip
        method = admin.post if path.endswith("/gold") else admin.get
        kwargs = {"data": {"csrf_token": site.csrf(admin), "gold": "a"}} if path.endswith("/gold") else {}
        page = method(path, headers=html, **kwargs)
        assert page.status_code == 404 and link in page.text, (path, page.text[-400:])
    ann, _ = site.annotator(project_id, "ann")
    assert '<a href="/annotate">Back to your queue</a>' in ann.get("/annotate/items/424242").text


def test_a_favicon_is_served(site):
    client = site.client()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00" and icon.content[22:26] == b"\x89PNG"
    assert '<link rel="icon" href="/favicon.ico">' in client.get("/").text

"""The labeling app over HTTP, in process (TestClient): the admin flow, voting, roles and CSRF."""

from __future__ import annotations

import json
from collections import Counter

from sqlalchemy import func, select

from preftune.web import db
from preftune.web.security import COOKIE
from preftune.web.votes import assignment_for


def _candidates_file(n: int, payload: str = "") -> bytes:
    rows = [
        {"prompt": f"Question {i}?{payload}", "completions": [f"first {i}{payload}", f"second {i}"]}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _admin_project(site, n_items=6, overlap=2, guideline="Prefer **short** answers."):
    admin = site.admin()
    response = admin.post(
        "/admin/projects",
        data={
            "name": "demo",
            "guideline": guideline,
            "overlap": overlap,
            "gold_rate": 0,
            "csrf_token": site.csrf(admin),
        },
    )
    assert response.status_code == 200 and "project created" in response.text
    project_id = site.store.project_by_name("demo")["id"]
    if not n_items:
        return admin, project_id
    response = admin.post(
        f"/admin/projects/{project_id}/candidates",
        data={"csrf_token": site.csrf(admin)},
        files={"file": ("cands.jsonl", _candidates_file(n_items), "application/jsonl")},
    )
    assert response.status_code == 200 and f"kept {n_items}" in response.text
    return admin, project_id


def _vote(client, item_id, choice, vote_id, strength="", csrf=None):
    return client.post(
        f"/annotate/items/{item_id}/vote",
        data={
            "csrf_token": csrf or client.app.state.store.session(client.cookies.get(COOKIE))["csrf"],
            "vote_id": vote_id,
            "choice": choice,
            "strength": strength,
        },
        headers={"accept": "application/json"},
    )


def _next(client):
    return client.get("/annotate", headers={"accept": "application/json"}).json()


def test_admin_flow_assigns_each_item_to_overlap_distinct_annotators(site):
    admin, project_id = _admin_project(site, n_items=6, overlap=2)
    people = {}
    for name in ("ann", "bob", "cat"):
        page = admin.post(
            f"/admin/projects/{project_id}/annotators", data={"name": name, "csrf_token": site.csrf(admin)}
        )
        link = page.text.split('id="invite-link" readonly value="')[1].split('"')[0]
        people[name] = site.client(link.split("/login/")[1])
    response = admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    assert "12 assignments added" in response.text
    holders = Counter()
    for name, client in people.items():
        seen = []
        while (item := _next(client))["item_id"] is not None:
            seen.append(item["item_id"])
            assert _vote(client, item["item_id"], "skip", f"skip-{name}-{len(seen):04d}").status_code == 200
        assert len(seen) == len(set(seen)) == 4
        holders.update(seen)
    assert set(holders.values()) == {2} and len(holders) == 6


def test_shown_order_is_random_stored_and_used_to_read_the_vote(site):
    admin, project_id = _admin_project(site, n_items=30, overlap=1)
    client, user_id = site.annotator(project_id, "ann")
    admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    sides = Counter()
    for number in range(30):
        item = _next(client)
        stored_left = site.store.item(item["item_id"])
        with site.store.read() as c:
            shown_left = c.execute(
                select(db.assignments.c.shown_left).where(
                    db.assignments.c.user_id == user_id, db.assignments.c.item_id == item["item_id"]
                )
            ).scalar()
        sides[shown_left] += 1
        assert item["left"] == stored_left[f"response_{shown_left}"]
        assert (
            _vote(client, item["item_id"], "left", f"vote-{number:04d}", strength="2").json()["choice"]
            == shown_left
        )
    # Both orders occur (30 fair draws all alike: probability 2e-9).
    assert sides["a"] > 0 and sides["b"] > 0
    with site.store.read() as c:
        votes = c.execute(select(db.votes.c.choice, db.votes.c.shown_left, db.votes.c.strength)).all()
    assert all(choice == left and strength == 2 for choice, left, strength in votes)


def test_votes_are_idempotent_by_client_vote_id(site):
    admin, project_id = _admin_project(site, n_items=2, overlap=1)
    client, _ = site.annotator(project_id, "ann")
    admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    item_id = _next(client)["item_id"]
    first = _vote(client, item_id, "right", "vote-aaaa-0001")
    retry = _vote(client, item_id, "right", "vote-aaaa-0001")
    assert first.status_code == retry.status_code == 200
    assert first.json()["created"] is True and retry.json()["created"] is False
    other = _vote(client, item_id, "left", "vote-aaaa-0002")
    assert other.status_code == 409
    with site.store.read() as c:
        assert c.execute(select(func.count()).select_from(db.votes)).scalar() == 1
    # Never the same item twice: the next item differs, and the voted one redirects onward.
    assert _next(client)["item_id"] != item_id
    assert client.get(f"/annotate/items/{item_id}", follow_redirects=False).status_code == 303


def test_role_checks(site):
    admin, project_id = _admin_project(site, n_items=4, overlap=1)
    ann, _ = site.annotator(project_id, "ann")
    bob, _ = site.annotator(project_id, "bob")
    admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    for path in ("/admin", f"/admin/projects/{project_id}", f"/admin/projects/{project_id}/quality"):
        assert ann.get(path).status_code == 403
    assert ann.get(f"/admin/projects/{project_id}/export.jsonl").status_code == 403
    created = ann.post("/admin/projects", data={"name": "mine", "csrf_token": site.csrf(ann)})
    assert created.status_code == 403 and len(site.store.projects()) == 1
    bobs_item = _next(bob)["item_id"]
    assert ann.get(f"/annotate/items/{bobs_item}").status_code == 403
    assert _vote(ann, bobs_item, "left", "vote-steal-0001").status_code == 403
    assert admin.get("/annotate").status_code == 403
    stranger = site.client()
    assert stranger.get("/admin").status_code == 401 and stranger.get("/annotate").status_code == 401
    assert stranger.get("/login/not-a-real-token").status_code == 403


def test_csrf_is_required_on_every_state_change(site):
    admin, project_id = _admin_project(site, n_items=2, overlap=1)
    client, _ = site.annotator(project_id, "ann")
    admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    item_id = _next(client)["item_id"]
    other, _ = site.annotator(project_id, "bob")
    for token in (None, "wrong", site.csrf(other)):
        data = {"vote_id": "vote-csrf-0001", "choice": "left"}
        if token is not None:
            data["csrf_token"] = token
        assert client.post(f"/annotate/items/{item_id}/vote", data=data).status_code == 403
    assert admin.post("/admin/projects", data={"name": "x"}).status_code == 403
    assert client.post("/logout").status_code == 403
    with site.store.read() as c:
        assert c.execute(select(func.count()).select_from(db.votes)).scalar() == 0
    assert len(site.store.projects()) == 1
    # The header form of the token works for script clients.
    response = client.post(
        f"/annotate/items/{item_id}/vote",
        data={"vote_id": "vote-csrf-0002", "choice": "tie"},
        headers={"x-csrf-token": site.csrf(client), "accept": "application/json"},
    )
    assert response.status_code == 200 and response.json()["choice"] == "tie"


def test_login_cookie_flags_and_security_headers(site):
    admin = site.client()
    response = admin.get(f"/login/{site.store.new_admin_token()}", follow_redirects=False)
    cookie = response.headers["set-cookie"].lower()
    assert response.headers["location"] == "/admin"
    assert "httponly" in cookie and "samesite=lax" in cookie
    page = admin.get("/admin")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert admin.cookies.get(COOKIE) not in page.text  # the session id never reaches the page


def test_model_and_annotator_text_is_escaped(site, make_items):
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    admin, project_id = _admin_project(site, n_items=0, overlap=1, guideline=f"# Rules {payload}")
    site.store.add_items(project_id, make_items(1, prefix=payload))
    admin.post(
        f"/admin/projects/{project_id}/annotators", data={"name": payload, "csrf_token": site.csrf(admin)}
    )
    admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    annotator_id = [u for u in site.store.users(project_id) if u["role"] == "annotator"][0]["id"]
    client = site.client()
    client.cookies.set(COOKIE, site.store.create_session(annotator_id)[0])
    pages = [client.get("/annotate").text, admin.get(f"/admin/projects/{project_id}").text]
    pages.append(admin.get(f"/admin/projects/{project_id}/items").text)
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_export_round_trips_into_the_pairs_reader(site, tmp_path):
    from preftune.data.formats import read_pairs
    from preftune.web.export import export_project

    admin, project_id = _admin_project(site, n_items=4, overlap=2)
    people = [site.annotator(project_id, name) for name in ("ann", "bob")]
    admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    first, second, third, fourth = (i["id"] for i in site.store.items(project_id))
    # Wanted votes in item terms, per person: (choice, strength).
    plan = {
        first: [("a", "4"), ("a", "2")],
        second: [("b", ""), ("b", "")],
        third: [("tie", ""), ("tie", "")],
        fourth: [("a", ""), ("b", "")],
    }
    for person, (client, user_id) in enumerate(people):
        while (item := _next(client))["item_id"] is not None:
            choice, strength = plan[item["item_id"]][person]
            if choice in ("a", "b"):
                shown_left = assignment_for(site.store, user_id, item["item_id"])["shown_left"]
                choice = "left" if shown_left == choice else "right"
            response = _vote(
                client, item["item_id"], choice, f"vote-{person}-{item['item_id']:04d}", strength
            )
            assert response.status_code == 200
    download = admin.get(f"/admin/projects/{project_id}/export.jsonl?min_votes=2&drop=ties,both_bad")
    assert download.status_code == 200
    report = export_project(site.store, "demo", tmp_path / "pairs.jsonl", min_votes=2, drop="ties,both_bad")
    assert (tmp_path / "pairs.jsonl").read_bytes() == download.content
    assert report.dropped == Counter({"tie": 1, "no majority": 1}) and report.kept == 2
    pairs, _read_report = read_pairs(tmp_path / "pairs.jsonl")
    by_item = {p.meta["item_id"]: p for p in pairs}
    assert sorted(by_item) == [first, second]
    a_wins, b_wins = site.store.item(first), site.store.item(second)
    assert by_item[first].chosen.content == a_wins["response_a"] == "first 0"
    assert by_item[first].rejected.content == a_wins["response_b"]
    assert by_item[second].chosen.content == b_wins["response_b"]
    assert by_item[first].prompt[0].content == "Question 0?"
    # "much" (1) and "slightly" (1/3) average to a margin of 2/3; no strength, no margin.
    assert abs(by_item[first].margin - 2 / 3) < 1e-9 and by_item[second].margin is None

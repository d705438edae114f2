"""Hostile values in ids and fields, on SQLite and PostgreSQL: 404 or 400 with a reason, never 500."""

from __future__ import annotations

import pytest

from preftune.web.assign import assign_items

# Past PostgreSQL's 32-bit ids, SQLite's 64-bit ones, and any integer type at all.
HUGE_IDS = [2**31, 2**63, 2**64, 10**30]


@pytest.mark.parametrize("huge", HUGE_IDS)
def test_ids_past_the_integer_range_are_not_found(any_site, make_items, huge):
    store = any_site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(1))
    admin = any_site.admin()
    for path in (
        f"/admin/projects/{huge}",
        f"/admin/projects/{huge}/items",
        f"/admin/projects/{huge}/quality",
        f"/admin/projects/{huge}/export.jsonl",
        f"/admin/jobs/{huge}",
    ):
        assert admin.get(path).status_code == 404, path
    csrf = {"csrf_token": any_site.csrf(admin)}
    assert admin.post(f"/admin/projects/{huge}/assign", data=csrf).status_code == 404
    gold = admin.post(f"/admin/projects/{project_id}/items/{huge}/gold", data={**csrf, "gold": "a"})
    assert gold.status_code == 404
    ann, _user_id = any_site.annotator(project_id, "ann")
    assert ann.get(f"/annotate/items/{huge}").status_code == 404
    vote = ann.post(
        f"/annotate/items/{huge}/vote",
        data={"csrf_token": any_site.csrf(ann), "vote_id": "vote-00001", "choice": "left"},
    )
    assert vote.status_code == 404
    # The largest id that exists in principle is looked up and simply not found.
    assert admin.get(f"/admin/projects/{2**31 - 1}").status_code == 404


def test_nul_characters_in_names_and_rationales_are_refused(any_site, make_items):
    store = any_site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(1))
    admin = any_site.admin()
    csrf = {"csrf_token": any_site.csrf(admin)}
    json = {"accept": "application/json"}
    for path, data in (
        ("/admin/projects", {"name": "bad\x00name"}),
        (f"/admin/projects/{project_id}/annotators", {"name": "ann\x00"}),
        (f"/admin/projects/{project_id}/settings", {"guideline": "x\x00", "overlap": "1", "gold_rate": "0"}),
        (f"/admin/projects/{project_id}/judge", {"judge": "sentiment\x00"}),
    ):
        answer = admin.post(path, data={**csrf, **data}, headers=json)
        assert answer.status_code == 400, (path, answer.text)
        assert "NUL character" in answer.json()["detail"]
    assert admin.get(f"/admin/projects/{project_id}/items?notice=a%00b").status_code == 400
    ann, _user_id = any_site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    item_id = store.items(project_id)[0]["id"]
    vote = ann.post(
        f"/annotate/items/{item_id}/vote",
        data={"csrf_token": any_site.csrf(ann), "vote_id": "vote-00002", "choice": "left", "rationale": "a\x00b"},
        headers=json,
    )
    assert vote.status_code == 400 and "NUL character" in vote.json()["detail"]
    # Other control characters in a name are refused by the store itself (a CLI caller included).
    from preftune.web.store import StoreError

    with pytest.raises(StoreError, match="control characters"):
        store.create_user("two\nlines", "annotator", project_id)
    assert [p["name"] for p in store.projects()] == ["p"]
    assert [u["name"] for u in store.users(project_id)] == ["ann"]


@pytest.mark.parametrize("strength", ["²", "٣", "9" * 5000, "0", "5", " 3", "3.0", "+3", "-1"])
def test_only_the_documented_strengths_are_taken(site, make_items, strength):
    store = site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(1))
    ann, user_id = site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    item_id = store.items(project_id)[0]["id"]
    form = {"csrf_token": site.csrf(ann), "vote_id": "vote-00003", "choice": "left"}
    refused = ann.post(f"/annotate/items/{item_id}/vote", data={**form, "strength": strength},
                       headers={"accept": "application/json"})  # fmt: skip
    assert refused.status_code == 400 and "strength must be 1, 2, 3 or 4" in refused.json()["detail"]
    assert store.item_counts(project_id)["votes"] == 0
    taken = ann.post(f"/annotate/items/{item_id}/vote", data={**form, "strength": "3"},
                     headers={"accept": "application/json"})  # fmt: skip
    assert taken.status_code == 200 and taken.json()["created"]

"""Thumbs projects (one answer per item, thumbs up / down, for KTO): the schema upgrade, the admin
flow over HTTP, votes that fit the project's kind, undo, and the export to unpaired rows, which
reads back through `preftune.data.unpaired`; pairwise votes exported as unpaired rows too."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from preftune.data.unpaired import read_unpaired
from preftune.web import migrations
from preftune.web.assign import assign_items
from preftune.web.export import export_project
from preftune.web.security import COOKIE
from preftune.web.store import NewItem, Store, StoreError


def _vote(client, item_id, choice, vote_id):
    csrf = client.app.state.store.session(client.cookies.get(COOKIE))["csrf"]
    return client.post(f"/annotate/items/{item_id}/vote", headers={"accept": "application/json"},
                       data={"csrf_token": csrf, "vote_id": vote_id, "choice": choice})  # fmt: skip


def _thumbs_project(site, overlap=2):
    admin = site.admin()
    response = admin.post("/admin/projects", data={"name": "coach", "guideline": "Thumbs up if a child gets it.",
                                                   "overlap": overlap, "gold_rate": 0, "kind": "thumbs",
                                                   "csrf_token": site.csrf(admin)})  # fmt: skip
    assert response.status_code == 200 and "answers to rate" in response.text
    project = site.store.project_by_name("coach")
    assert project["kind"] == "thumbs"
    rows = [{"prompt": "Why is the sky blue?", "completion": "Light bounces around in the air."},
            {"prompt": "What is rain?", "completions": ["Water falling from clouds.", "A film genre."]}]  # fmt: skip
    upload = "".join(json.dumps(r) + "\n" for r in rows[:1]).encode()
    response = admin.post(f"/admin/projects/{project['id']}/candidates", data={"csrf_token": site.csrf(admin)},
                          files={"file": ("answers.jsonl", upload, "application/jsonl")})  # fmt: skip
    assert response.status_code == 200 and "1 answers imported" in response.text
    upload = json.dumps(rows[1]).encode() + b"\n"
    response = admin.post(f"/admin/projects/{project['id']}/candidates", data={"csrf_token": site.csrf(admin)},
                          files={"file": ("generated.jsonl", upload, "application/jsonl")})  # fmt: skip
    assert "2 answers imported" in response.text  # each completion is an item of its own
    return admin, project["id"]


def test_thumbs_votes_export_as_unpaired_rows_that_read_back(site, tmp_path):
    admin, project_id = _thumbs_project(site)
    ann, _ = site.annotator(project_id, "ann")
    bob, _ = site.annotator(project_id, "bob")
    assign_items(site.store, project_id, seed=1)
    items = {i["response_a"]: i["id"] for i in site.store.items(project_id)}
    assert set(items) == {"Light bounces around in the air.", "Water falling from clouds.", "A film genre."}
    page = ann.get("/annotate", headers={"accept": "application/json"}).json()
    assert page["answer"] in items and page["choices"] == ["up", "down", "skip"] and "left" not in page
    sky, rain, film = (items[k] for k in ("Light bounces around in the air.", "Water falling from clouds.", "A film genre."))
    plan = {ann: {sky: "up", rain: "up", film: "down"}, bob: {sky: "up", rain: "down", film: "down"}}
    for client, choices in plan.items():
        for item_id, choice in choices.items():
            response = _vote(client, item_id, choice, f"vote-{id(client)}-{item_id}")
            assert response.status_code == 200 and response.json()["choice"] == choice
    # A pairwise choice has no meaning on one answer.
    assert _vote(ann, sky, "left", "vote-left-0001").status_code == 400

    out = tmp_path / "thumbs.jsonl"
    report = export_project(site.store, "coach", out)
    assert report.kept == 2 and report.dropped == {"no majority": 1} and "unpaired examples kept" in report.summary()
    examples, read_report = read_unpaired(out)
    assert read_report.format == "unpaired"
    assert [(e.prompt[0].content, e.completion.content, e.label) for e in examples] == [
        ("Why is the sky blue?", "Light bounces around in the air.", True), ("What is rain?", "A film genre.", False)]  # fmt: skip
    assert examples[0].meta["votes"] == {"up": 2, "down": 0}
    download = admin.get(f"/admin/projects/{project_id}/export.jsonl")
    assert download.status_code == 200 and download.content == out.read_bytes()
    assert admin.get(f"/admin/projects/{project_id}/quality").status_code == 200
    from preftune.web.quality import agreement
    from preftune.web.votes import project_votes

    # Thumbs are nominal labels too. ann: up, up, down; bob: up, down, down. Cohen's kappa:
    # observed 2/3, expected (2 * 1 + 1 * 2) / 9 = 4/9, so (2/3 - 4/9) / (1 - 4/9) = 0.4.
    found = agreement(project_votes(site.store, project_id))
    assert found.shared_items == 3 and found.kappas[0][2:] == (3, pytest.approx(0.4))
    assert 0 < found.alpha_nominal < 1


def test_undo_takes_a_thumb_back(site):
    _admin, project_id = _thumbs_project(site, overlap=1)
    ann, _ = site.annotator(project_id, "ann")
    assign_items(site.store, project_id, seed=1)
    first = ann.get("/annotate", headers={"accept": "application/json"}).json()["item_id"]
    assert _vote(ann, first, "down", "vote-undo-0001").status_code == 200
    csrf = site.csrf(ann)
    undone = ann.post("/annotate/undo", data={"csrf_token": csrf}, headers={"accept": "application/json"})
    assert undone.json()["item_id"] == first
    assert ann.get("/annotate", headers={"accept": "application/json"}).json()["item_id"] == first
    assert site.store.item_counts(project_id)["votes"] == 0


def test_judges_and_queue_reordering_refuse_a_thumbs_project(site):
    admin, project_id = _thumbs_project(site, overlap=1)
    for path, data in (("judge", {"judge": "sentiment"}), ("prioritize", {"reward_model": ""})):
        response = admin.post(f"/admin/projects/{project_id}/{path}", data={**data, "csrf_token": site.csrf(admin)})
        assert response.status_code == 400 and "needs a pairwise project" in response.text


def test_project_kind_and_gold_are_checked(sqlite_store):
    with pytest.raises(StoreError, match="project kind must be one of pairwise, thumbs"):
        sqlite_store.create_project("x", kind="stars")
    project_id = sqlite_store.create_project("t", kind="thumbs")
    (item_id,) = sqlite_store.add_items(project_id, [NewItem([{"role": "user", "content": "Q?"}], "A.", None)])
    sqlite_store.set_gold(item_id, "down")
    assert sqlite_store.item(item_id)["gold"] == "down"
    with pytest.raises(StoreError, match="gold answer must be one of up, down, not 'a'"):
        sqlite_store.set_gold(item_id, "a")


def test_pairwise_votes_export_as_unpaired_rows(sqlite_store, tmp_path):
    from preftune.web.votes import record_vote

    store = sqlite_store
    project_id = store.create_project("pairs", overlap=1)
    prompts = ["Q0?", "Q1?", "Q2?", "Q3?"]
    store.add_items(project_id, [NewItem([{"role": "user", "content": p}], f"{p} A", f"{p} B") for p in prompts])
    user_id, _ = store.create_user("ann", "annotator", project_id)
    assign_items(store, project_id, seed=3)
    ids = [i["id"] for i in store.items(project_id)]
    for item_id, choice in zip(ids, ["a", "b", "both_bad", "tie"], strict=True):
        record_vote(store, user_id, item_id, f"vote-pairs-{item_id}", choice)
    with pytest.raises(StoreError, match="a pairwise project takes a, b, tie, both_bad, skip, not 'up'"):
        record_vote(store, user_id, ids[0], "vote-pairs-up-0", "up")

    report = export_project(store, "pairs", tmp_path / "u.jsonl", drop="ties", unpaired=True)
    examples, _ = read_unpaired(tmp_path / "u.jsonl")
    assert [(e.completion.content, e.label) for e in examples] == [
        ("Q0? A", True), ("Q0? B", False), ("Q1? B", True), ("Q1? A", False), ("Q2? A", False), ("Q2? B", False)]  # fmt: skip
    assert report.kept == 6 and report.dropped == {"tie": 1}
    # Kept ties say nothing about either answer alone: dropped from unpaired rows, with the reason.
    report = export_project(store, "pairs", tmp_path / "v.jsonl", drop="none", unpaired=True)
    assert report.kept == 6 and report.dropped == {"tie (no thumbs for either answer)": 1}


def test_a_version_2_database_upgrades_to_pairwise_projects(tmp_path):
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    store = Store(url)
    project_id = store.create_project("old")
    with store.write() as c:
        c.execute(text("ALTER TABLE projects DROP COLUMN kind"))
        c.execute(text("UPDATE schema_version SET version = 2"))
    store.close()
    upgraded = Store(url)
    assert upgraded.schema_version == migrations.SCHEMA_VERSION
    assert upgraded.project(project_id)["kind"] == "pairwise"
    assert upgraded.project(upgraded.create_project("new", kind="thumbs"))["kind"] == "thumbs"
    upgraded.close()


def test_generation_gives_a_thumbs_project_one_answer_per_prompt(site):
    """Through the admin form: the job samples one answer per prompt (the tiny in-process model)."""
    import time

    admin = site.admin()
    project_id = site.store.create_project("gen", kind="thumbs")
    site.store.add_items(project_id, [NewItem([{"role": "user", "content": f"Why is the sky blue? ({i})"}]) for i in range(2)])
    response = admin.post(f"/admin/projects/{project_id}/generate",
                          data={"model": "tiny", "max_new_tokens": 8, "csrf_token": site.csrf(admin)})  # fmt: skip
    assert response.status_code == 200 and "generation started" in response.text
    deadline = time.monotonic() + 120
    while site.store.jobs(project_id)[0]["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    job = site.store.jobs(project_id)[0]
    assert job["status"] == "done" and "generated 1 answer for 2 prompts" in job["message"], job
    for item in site.store.items(project_id):
        assert isinstance(item["response_a"], str) and item["response_b"] is None
    assert site.store.item_counts(project_id)["ready"] == 2


def test_cli_export_writes_unpaired_rows(sqlite_store, tmp_path):
    from typer.testing import CliRunner

    from preftune.cli import app
    from preftune.web.votes import record_vote

    project_id = sqlite_store.create_project("cli", overlap=1)
    sqlite_store.add_items(project_id, [NewItem([{"role": "user", "content": "Q?"}], "good", "bad")])
    user_id, _ = sqlite_store.create_user("ann", "annotator", project_id)
    assign_items(sqlite_store, project_id, seed=0)
    record_vote(sqlite_store, user_id, sqlite_store.items(project_id)[0]["id"], "vote-cli-00001", "a")
    out = tmp_path / "u.jsonl"
    result = CliRunner().invoke(app, ["export", "--db", sqlite_store.url, "--project", "cli", "-o", str(out), "--unpaired"])
    assert result.exit_code == 0 and "2 unpaired examples kept" in result.output, result.output
    examples, _ = read_unpaired(out)
    assert [(e.completion.content, e.label) for e in examples] == [("good", True), ("bad", False)]

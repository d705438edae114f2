"""Background jobs: candidate generation (with the in-process tiny model) and judge auto-labeling."""

from __future__ import annotations

import time

import pytest

from preftune.web import jobs
from preftune.web.store import NewItem


def _wait(store, job_id, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = store.job(job_id)
        if job["status"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {seconds}s: {store.job(job_id)}")


def _prompts(store, n):
    project_id = store.create_project("gen")
    store.add_items(
        project_id, [NewItem([{"role": "user", "content": f"Why is the sky blue? ({i})"}]) for i in range(n)]
    )
    return project_id


def test_generation_job_fills_pending_items_with_the_tiny_model(sqlite_store):
    project_id = _prompts(sqlite_store, 3)
    work = jobs.generation_work(sqlite_store, project_id, "tiny", max_new_tokens=8, seed=1)
    job_id = jobs.start_job(sqlite_store, project_id, "generate", work)
    job = _wait(sqlite_store, job_id)
    assert job["status"] == "done", job["message"]
    assert (job["done"], job["total"]) == (3, 3)
    for item in sqlite_store.items(project_id):
        assert isinstance(item["response_a"], str) and isinstance(item["response_b"], str)
    assert sqlite_store.item_counts(project_id)["pending"] == 0
    assert "3 prompts" in job["message"]


def test_job_progress_is_visible_to_the_page_and_failures_are_reported(site, monkeypatch):
    import preftune.generate
    import preftune.models.load

    project_id = _prompts(site.store, 20)
    admin = site.admin()
    seen = []

    def fake_generate(model, tokenizer, prompts, n, progress=None, **_):
        for done in range(1, len(prompts) + 1):
            progress(done, len(prompts))
        seen.append(admin.get("/admin/jobs/1").json())
        return [[f"{p[0].content} one", f"{p[0].content} two"] for p in prompts]

    monkeypatch.setattr(jobs, "PROGRESS_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(preftune.models.load, "load_policy", lambda name: ("model", "tokenizer"))
    monkeypatch.setattr(preftune.generate, "generate_completions", fake_generate)
    response = admin.post(
        f"/admin/projects/{project_id}/generate", data={"model": "fake", "csrf_token": site.csrf(admin)}
    )
    assert response.status_code == 200
    job = _wait(site.store, 1)
    assert job["status"] == "done"
    # The page saw the job running, with the chunk's progress: 8 of 20, then 16 of 20.
    assert [(s["status"], s["done"], s["total"]) for s in seen[:2]] == [
        ("running", 8, 20),
        ("running", 16, 20),
    ]
    assert site.store.item(1)["response_b"] == "Why is the sky blue? (0) two"

    monkeypatch.setattr(
        preftune.models.load, "load_policy", lambda name: (_ for _ in ()).throw(OSError("no such model"))
    )
    site.store.add_items(project_id, [NewItem([{"role": "user", "content": "more"}])])
    admin.post(
        f"/admin/projects/{project_id}/generate", data={"model": "nope", "csrf_token": site.csrf(admin)}
    )
    failed = _wait(site.store, 2)
    assert failed["status"] == "failed" and failed["message"] == "OSError: no such model"
    assert "OSError: no such model" in admin.get(f"/admin/projects/{project_id}").text


def test_jobs_interrupted_by_a_restart_are_marked_failed(sqlite_store):
    project_id = sqlite_store.create_project("p")
    job_id = sqlite_store.create_job(project_id, "generate")
    assert sqlite_store.fail_interrupted_jobs() == 1
    assert sqlite_store.job(job_id)["status"] == "failed"
    assert jobs.running_job(sqlite_store, project_id) is None


def test_judge_auto_label_votes_as_a_named_annotator(site):
    admin = site.admin()
    project_id = site.store.create_project("judged", overlap=1)
    site.store.add_items(
        project_id,
        [
            NewItem(
                [{"role": "user", "content": "How was the film?"}],
                "It was wonderful and warm.",
                "It was awful.",
            ),
            NewItem(
                [{"role": "user", "content": "And the food?"}], "Terrible, I hated it.", "Great, I loved it!"
            ),
        ],
    )
    client, user_id = site.annotator(project_id, "ann")
    admin.post(f"/admin/projects/{project_id}/assign", data={"csrf_token": site.csrf(admin)})
    from preftune.web.votes import assignment_for, record_vote

    for item in site.store.items(project_id):
        # The person prefers the positive answer too, in item terms: 'a' then 'b'.
        wanted = "a" if item["response_a"].startswith("It was wonderful") else "b"
        assert assignment_for(site.store, user_id, item["id"]) is not None
        record_vote(site.store, user_id, item["id"], f"vote-ann-{item['id']:04d}", wanted)
    admin.post(
        f"/admin/projects/{project_id}/judge", data={"judge": "sentiment", "csrf_token": site.csrf(admin)}
    )
    assert _wait(site.store, 1)["status"] == "done"
    # Running it again adds nothing.
    admin.post(
        f"/admin/projects/{project_id}/judge", data={"judge": "sentiment", "csrf_token": site.csrf(admin)}
    )
    assert "voted on 0 new items" in _wait(site.store, 2)["message"]
    page = admin.get(f"/admin/projects/{project_id}/quality").text
    row = page.split("<tbody>")[-1]
    assert "judge:sentiment" in row and "1.000" in row  # full agreement with ann: kappa 1
    assert (
        admin.post(
            f"/admin/projects/{project_id}/judge", data={"judge": "nope", "csrf_token": site.csrf(admin)}
        ).status_code
        == 400
    )
    # A python: reward would import and call server code named by a form field: refused, alone or in a sum.
    for spec in ("python:subprocess:call", "sentiment,python:subprocess:call"):
        refused = admin.post(f"/admin/projects/{project_id}/judge", data={"judge": spec, "csrf_token": site.csrf(admin)})
        assert refused.status_code == 400 and "command line only" in refused.text


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": 0}])
def test_generate_form_is_validated(site, bad):
    admin = site.admin()
    project_id = _prompts(site.store, 1)
    data = {"model": "tiny", "csrf_token": site.csrf(admin), **bad}
    assert admin.post(f"/admin/projects/{project_id}/generate", data=data).status_code == 400
    assert site.store.jobs(project_id) == []

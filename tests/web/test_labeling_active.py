"""Active selection: the ordering rule, and the app's "reorder queues" job with and without a
reward model."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from preftune.web import db, jobs
from preftune.web.active import disagreement, priority_order, reward_uncertainty, uncertainty
from preftune.web.assign import assign_items
from preftune.web.votes import next_assignment, record_vote


def test_uncertainty_and_disagreement_closed_forms():
    assert uncertainty(0.5) == 1.0 and uncertainty(1.0) == 0.0 and uncertainty(0.75) == pytest.approx(0.5)
    assert reward_uncertainty(2.0, 2.0) == 1.0
    assert reward_uncertainty(3.0, 0.0) == pytest.approx(1 - abs(2 / (1 + 2.718281828459045**-3) - 1))
    assert disagreement(["a"]) == 0.0 and disagreement(["a", "a", "skip"]) == 0.0
    assert disagreement(["a", "b", "a", "tie"]) == pytest.approx(0.5)


def test_priority_order_puts_the_best_first_and_keeps_a_random_share():
    scores = {item: item / 100 for item in range(100)}
    assert priority_order(scores, random_share=0.0) == list(range(99, -1, -1))
    order = priority_order(scores, random_share=0.25, seed=3)
    assert sorted(order) == list(range(100))  # a permutation
    # Slots 4, 8, 12, ... are random draws; the others take the best left, in order.
    ranked = [item for n, item in enumerate(order, 1) if n % 4]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] == 99
    randoms = [item for n, item in enumerate(order, 1) if n % 4 == 0]
    assert sum(item < 50 for item in randoms[:12]) >= 3  # random slots reach the low-scored half
    assert order == priority_order(scores, random_share=0.25, seed=3)
    with pytest.raises(ValueError, match="random_share"):
        priority_order(scores, random_share=1.5)


def _wait(store, job_id):
    for _ in range(600):
        job = store.job(job_id)
        if job["status"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_reorder_puts_disputed_items_first_in_the_queues_of_those_still_to_vote(site, make_items):
    store = site.store
    project_id = store.create_project("p", overlap=3)
    store.add_items(project_id, make_items(8))
    ids = [site.annotator(project_id, name)[1] for name in ("ann", "bob", "cat")]
    assign_items(store, project_id, seed=0)
    disputed = store.items(project_id)[5]["id"]
    record_vote(store, ids[0], disputed, "vote-act-0001", "a")
    record_vote(store, ids[1], disputed, "vote-act-0002", "b")
    admin = site.admin()
    answer = admin.post(f"/admin/projects/{project_id}/prioritize", data={"csrf_token": site.csrf(admin), "reward_model": ""})
    assert answer.status_code == 200 and "reordering the queues" in answer.text
    job = _wait(store, store.jobs(project_id)[0]["id"])  # the newest job
    assert job["status"] == "done" and "by the people's disagreement" in job["message"], job
    assert next_assignment(store, ids[2])["item_id"] == disputed
    with store.read() as c:
        positions = c.execute(select(db.assignments.c.user_id, db.assignments.c.position)).all()
    assert len(set(positions)) == len(positions)
    bad = admin.post(f"/admin/projects/{project_id}/prioritize",
                     data={"csrf_token": site.csrf(admin), "reward_model": "judge:sentiment"},
                     headers={"accept": "application/json"})  # fmt: skip
    assert bad.status_code == 400 and "give rm:DIR" in bad.json()["detail"]


def test_reorder_by_a_reward_models_uncertainty(site, make_items, tmp_path):
    from preftune.data.schema import Message
    from preftune.judges import get_judge, score_batch
    from preftune.models.reward_model import from_causal_lm, save_scalar_model

    model, tokenizer = from_causal_lm("tiny", seed=11)
    rm_dir = save_scalar_model(model, tokenizer, tmp_path / "rm")
    store = site.store
    project_id = store.create_project("p")
    store.add_items(project_id, make_items(6))
    _client, user_id = site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    work = jobs.prioritize_work(store, project_id, f"rm:{rm_dir}")
    assert "rm:" in work(lambda *_: None)
    # The oracle: the same reward model scoring each item's two answers directly.
    judge = get_judge(f"rm:{rm_dir}")
    items = store.items(project_id)
    rewards = score_batch(judge, [[Message("user", i["prompt"][0]["content"])] for i in items for _ in range(2)],
                          [t for i in items for t in (i["response_a"], i["response_b"])])  # fmt: skip
    doubt = {i["id"]: reward_uncertainty(rewards[2 * n], rewards[2 * n + 1]) for n, i in enumerate(items)}
    assert next_assignment(store, user_id)["item_id"] == max(doubt, key=doubt.get)

"""MACE competence: recovers simulated annotators' competence, sees through a one-key spammer."""

from __future__ import annotations

import math
import random

import pytest

from preftune.web.mace import MIN_SHARED_ITEMS, competence, fit_mace


def _simulate(n_items: int, seed: int = 0):
    rng = random.Random(seed)
    labels = ["a", "b", "tie", "both_bad"]
    truth = {i: rng.choice(labels) for i in range(n_items)}
    # Competence; when not knowing, "always_a" presses its one key and the others pick at random.
    people = {"expert": 0.9, "good": 0.7, "fair": 0.5, "always_a": 0.0, "random": 0.0}
    table = {}
    for item, label in truth.items():
        row = {}
        for name, theta in people.items():
            if rng.random() < theta:
                row[name] = label
            else:
                row[name] = "a" if name == "always_a" else rng.choice(labels)
        table[item] = row
    return truth, people, table


def test_mace_recovers_competence_and_the_truth():
    truth, people, table = _simulate(400)
    fit = fit_mace(table)
    for name, theta in people.items():
        assert fit.competence[name] == pytest.approx(theta, abs=0.08), (name, fit.competence)
    assert fit.spam["always_a"]["a"] > 0.9  # its spam distribution is the one key
    posterior_right = sum(max(p, key=p.get) == truth[item] for item, p in fit.truth.items())
    majority_right = sum(
        (row := list(table[item].values())).count(label) > len(row) / 2 for item, label in truth.items()
    )
    assert posterior_right > majority_right  # weighting by competence beats counting heads
    assert all(math.isclose(sum(p.values()), 1.0) for p in fit.truth.values())


def test_competence_from_votes_needs_shared_items():
    truth, _people, table = _simulate(40, seed=3)
    votes = [
        {"item_id": item, "user_id": who, "choice": label}
        for item, row in table.items()
        for who, label in row.items()
    ]
    votes.append({"item_id": 999, "user_id": "loner", "choice": "a"})  # shares nothing
    votes.append({"item_id": 1, "user_id": "expert", "choice": "skip"})  # skips count for nothing
    scores = competence(votes)
    assert set(scores) == {"expert", "good", "fair", "always_a", "random"}
    assert scores["expert"] > scores["good"] > max(scores["always_a"], scores["random"])
    few = [v for v in votes if v["item_id"] < MIN_SHARED_ITEMS - 1]
    assert competence(few) == {}
    assert fit_mace({}).competence == {}


def test_quality_page_shows_competence_beside_kappa_and_gold(site, make_items):
    import re

    from preftune.web.assign import assign_items
    from preftune.web.votes import record_judge_vote, record_vote

    store = site.store
    project_id = store.create_project("p", overlap=2)
    store.add_items(project_id, make_items(3 * MIN_SHARED_ITEMS))
    ids = {name: site.annotator(project_id, name)[1] for name in ("ann", "bob")}
    judge_id = store.create_user("judge:sentiment", "judge", project_id)[0]
    assign_items(store, project_id, seed=0)
    flip = {"a": "b", "b": "a"}
    for n, item in enumerate(store.items(project_id)):
        truth = "a" if n % 3 else "b"
        record_vote(store, ids["ann"], item["id"], f"vote-ann-{n:03}", truth)  # always right
        record_vote(store, ids["bob"], item["id"], f"vote-bob-{n:03}", flip[truth] if n % 5 == 0 else truth)
        record_judge_vote(store, project_id, judge_id, item["id"], "a")  # one key, whatever the item
    page = site.admin().get(f"/admin/projects/{project_id}/quality").text
    table = page.split('<table id="annotators">')[1].split("</table>")[0]
    shown = dict(re.findall(r"<tr><td><bdi>([\w:]+)</bdi></td>.*?<td>([\d.—]+)</td></tr>", table, re.S))
    from preftune.web.votes import project_votes

    expected = competence(project_votes(store, project_id))
    assert shown == {name: f"{expected[uid]:.2f}" for name, uid in {**ids, "judge:sentiment": judge_id}.items()}
    assert min(shown, key=lambda name: float(shown[name])) == "judge:sentiment"  # the one-key voter

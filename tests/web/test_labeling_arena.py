"""Model arena: Bradley–Terry with ties as half a win, against closed forms and a simulation, and
the page over an import with a `models` list."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest

from preftune.web.arena import battles, fit_strengths, leaderboard, to_elo, win_probability
from preftune.web.assign import assign_items


def test_two_models_fit_the_closed_form():
    # MLE of p_A / p_B is wins / losses; ties add half a win to each side.
    fights = [("A", "B", 1.0)] * 30 + [("A", "B", 0.0)] * 10 + [("B", "A", 0.5)] * 4
    strength = fit_strengths(fights, ["A", "B"], prior_ties=0.0)
    assert strength[0] / strength[1] == pytest.approx((30 + 2) / (10 + 2), rel=1e-9)
    # Each virtual prior tie adds half a win to each side too.
    shrunk = fit_strengths(fights, ["A", "B"], prior_ties=1.0)
    assert shrunk[0] / shrunk[1] == pytest.approx((32 + 0.5) / (12 + 0.5), rel=1e-9)
    only_ties = fit_strengths([("A", "B", 0.5)] * 7, ["A", "B"], prior_ties=0.0)
    assert only_ties == pytest.approx([1.0, 1.0])
    ratings = to_elo(strength)
    assert win_probability(ratings[0], ratings[1]) == pytest.approx(32 / 44)


def test_a_simulated_arena_recovers_the_true_order_within_its_intervals():
    rng = random.Random(0)
    truth = {"base": 900.0, "sft": 1000.0, "dpo": 1100.0, "ppo": 1150.0}
    names = list(truth)
    fights = []
    for _ in range(3000):
        a, b = rng.sample(names, 2)
        p_a = win_probability(truth[a], truth[b])
        draw = rng.random()
        # A tie on 10% of draws, cut evenly from both sides of p_a: the expected score stays p_a.
        fights.append((a, b, 0.5 if abs(draw - p_a) < 0.05 else float(draw < p_a)))
    rows = leaderboard(fights, rounds=100, seed=1)
    assert [row.model for row in rows] == ["ppo", "dpo", "sft", "base"]
    centre = np.mean(list(truth.values()))
    for row in rows:
        assert row.ci_low <= row.rating <= row.ci_high
        assert abs((row.rating - np.mean([r.rating for r in rows])) - (truth[row.model] - centre)) < 40
    assert sum(row.battles for row in rows) == 2 * len(fights)
    assert sum(row.ties for row in rows) % 2 == 0 and sum(row.ties for row in rows) > 0


def test_a_model_that_never_wins_keeps_a_finite_rating():
    rows = leaderboard([("good", "bad", 1.0)] * 20, rounds=20)
    assert [r.model for r in rows] == ["good", "bad"] and all(math.isfinite(r.rating) for r in rows)
    # 20 wins and the prior's one virtual tie: odds 20.5 : 0.5.
    assert rows[0].rating - rows[1].rating == pytest.approx(400 * math.log10(41), rel=1e-6)
    assert leaderboard([]) == []


def test_battles_count_human_votes_only_and_read_sides_from_the_item():
    items = [
        {"id": 1, "model_a": "dpo", "model_b": "base"},
        {"id": 2, "model_a": None, "model_b": None},
    ]
    vote = lambda item, choice, role="annotator": {"item_id": item, "choice": choice, "user_role": role}  # noqa: E731
    fights = battles(items, [vote(1, "a"), vote(1, "b"), vote(1, "both_bad"), vote(1, "skip"),
                             vote(1, "a", "judge"), vote(2, "a")])  # fmt: skip
    assert fights == [("dpo", "base", 1.0), ("dpo", "base", 0.0), ("dpo", "base", 0.5)]


def test_arena_page_over_an_import_with_models(site):
    store = site.store
    project_id = store.create_project("arena", overlap=1)
    admin = site.admin()
    rows = [
        {"prompt": f"Q{i}?", "id": f"q{i}", "models": ["base", "dpo", "ppo"],
         "completions": [f"base says {i}", f"dpo says {i}", f"ppo says {i}"]}
        for i in range(6)
    ]  # fmt: skip
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    answer = admin.post(
        f"/admin/projects/{project_id}/candidates",
        files={"file": ("arena.jsonl", data)},
        data={"csrf_token": site.csrf(admin)},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    items = store.items(project_id)
    assert len(items) == 18  # 3 pairs per prompt
    assert {(i["model_a"], i["model_b"]) for i in items} == {("base", "dpo"), ("base", "ppo"), ("dpo", "ppo")}
    assert items[0]["external_id"] == "q0:0-1"
    ann, user_id = site.annotator(project_id, "ann")
    assign_items(store, project_id, seed=0)
    # This person prefers ppo > dpo > base, always: the higher-ranked model's side.
    rank = {"base": 0, "dpo": 1, "ppo": 2}
    for n, item in enumerate(items):
        side = "a" if rank[item["model_a"]] > rank[item["model_b"]] else "b"
        from preftune.web.votes import record_vote

        record_vote(store, user_id, item["id"], f"vote-arena-{n:03}", side)
    page = admin.get(f"/admin/projects/{project_id}/arena").text
    order = re.findall(r"<td>\d+</td><td><bdi>(\w+)</bdi></td>", page)
    assert order == ["ppo", "dpo", "base"]
    assert "18 battles" in page
    bad = admin.post(
        f"/admin/projects/{project_id}/candidates",
        files={"file": ("bad.jsonl", b'{"prompt": "x", "completions": ["a", "b"], "models": ["m"]}\n')},
        data={"csrf_token": site.csrf(admin)},
        headers={"accept": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()["detail"] == "bad.jsonl:1: models must be a list of names, one per completion"

"""The playground: its computations against the library's losses, its JSON API, and the page in Chromium.

The browser tests read the exact numbers the page shows (each number element keeps the server's
value in `data-value`) and recompute them here with the library functions, for the inputs the page
sent (each module keeps its last query string in `data-request`). Screenshots of each module are
saved under docs/img/ for the README tour.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import torch
from fastapi.testclient import TestClient

from preftune.losses.dpo import sigmoid_loss
from preftune.losses.kl import kl_k1
from preftune.losses.reward import bradley_terry
from preftune.playground import hacking
from preftune.playground.answers import ANSWERS, LONGEST
from preftune.playground.dpo import dpo_state
from preftune.playground.optimum import (
    exact_kl,
    optimal_policy,
    optimum_state,
    policy_numbers,
    reference_logprobs,
)
from preftune.playground.preferences import (
    ORDERED_PAIRS,
    LabelSet,
    fit_rewards,
    parse_labels,
    preference_state,
    simulated_labels,
    vote_counts,
)
from preftune.web.app import create_app
from preftune.web.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"browser tests need Debian's Chromium at {CHROMIUM}"
)


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---- the computations ---------------------------------------------------------------------------


def test_bradley_terry_fit_is_the_likelihood_maximum_and_recovers_the_labelers_ranking():
    labels = LabelSet(simulated=600, noise=0.3, seed=1)
    rewards = fit_rewards(labels.weights())
    # Stationary point of the weighted BT likelihood, computed through the library loss.
    probe = rewards.clone().requires_grad_(True)
    chosen = torch.tensor([c for c, _ in ORDERED_PAIRS])
    rejected = torch.tensor([r for _, r in ORDERED_PAIRS])
    losses, _ = bradley_terry(probe[chosen], probe[rejected])
    ((losses * labels.weights()).sum() / labels.weights().sum()).backward()
    assert probe.grad.abs().max() < 1e-8
    assert abs(float(rewards.mean())) < 1e-12
    gold_order = sorted(range(len(ANSWERS)), key=lambda i: ANSWERS[i].gold)
    assert sorted(range(len(ANSWERS)), key=lambda i: float(rewards[i])) == gold_order


def test_more_labeler_noise_flattens_the_rewards():
    spreads = [
        preference_state(LabelSet(simulated=400, noise=noise, seed=3))["spread"] for noise in (0.25, 1.0, 4.0)
    ]
    assert spreads[0] > spreads[1] > spreads[2]
    assert spreads[2] < 0.5 * spreads[0]


def test_simulated_labels_are_deterministic_and_follow_the_noise():
    assert simulated_labels(50, 0.5, seed=4) == simulated_labels(50, 0.5, seed=4)
    perfect = simulated_labels(200, 0.0, seed=4)
    assert all(ANSWERS[w].gold > ANSWERS[loser].gold for w, loser in perfect)
    noisy = simulated_labels(400, 3.0, seed=4)
    wrong = sum(ANSWERS[w].gold < ANSWERS[loser].gold for w, loser in noisy) / len(noisy)
    assert 0.2 < wrong < 0.5


def test_parse_labels_rejects_bad_items_by_name():
    assert parse_labels("0>3, 2>5") == ((0, 3), (2, 5))
    for bad, words in [("0>0", "two different"), ("1-2", "WINNER>LOSER"), ("0>9", "two different")]:
        with pytest.raises(ValueError, match=words):
            parse_labels(bad)


def test_optimal_policy_is_the_closed_form_and_maximises_the_objective():
    rewards = tensor([1.0, 0.5, 0.0, -1.0, 0.2, -2.0])
    beta = 0.7
    target = optimal_policy(rewards, beta)
    ref = reference_logprobs().exp()
    expected = ref * torch.exp(rewards / beta)
    assert torch.allclose(target, expected / expected.sum(), atol=1e-15)
    # J(pi*) >= J(pi) for nearby policies: pi* is the maximiser of E[r] - beta KL.
    best = policy_numbers(target, rewards, beta)["objective"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = torch.softmax(
            target.log() + 0.3 * torch.randn(6, generator=generator, dtype=torch.float64), -1
        )
        assert policy_numbers(other, rewards, beta)["objective"] < best
    # And its KL is the exact expectation of the k1 estimator.
    assert exact_kl(target) == pytest.approx(
        float((target * kl_k1(target.log(), ref.log())).sum()), abs=1e-15
    )


def test_ppo_iterations_walk_to_pi_star():
    labels = LabelSet()
    rewards = fit_rewards(labels.weights())
    state = optimum_state(rewards, 1.0, reference_logprobs(), lr=1.0, iteration=0, steps=0)
    first = state["distance"]
    state = optimum_state(rewards, 1.0, tensor(state["logits"]), lr=1.0, iteration=0, steps=40)
    assert state["iteration"] == 40
    assert state["distance"] < 0.01 * first
    assert 0 <= state["ppo"]["policy/clipfrac_avg"] <= 1 and state["ppo"]["policy/approxkl_avg"] >= 0


def test_dpo_converges_to_the_same_pi_star_as_the_kl_regularised_optimum():
    labels = LabelSet(simulated=60, noise=0.7, seed=2)
    rewards = fit_rewards(labels.weights())
    for beta in (0.3, 2.0):  # the step size is scaled by 1/beta^2: the same setting works at both
        state = dpo_state(rewards, labels.weights(), beta, reference_logprobs(), 10.0, 0, 60)
        assert state["converged"]
        assert (
            max(
                abs(p - q)
                for p, q in zip(state["policy"], optimal_policy(rewards, beta).tolist(), strict=True)
            )
            < 1e-6
        )
        # Implicit rewards equal the Bradley–Terry rewards up to a constant (both centred here).
        assert state["implicit_rewards_centred"] == pytest.approx(rewards.tolist(), abs=1e-6)


def test_dpo_gradient_weight_is_sigmoid_of_minus_beta_delta():
    labels = LabelSet()
    rewards = fit_rewards(labels.weights())
    logits = tensor([0.3, -0.2, 0.1, 0.0, 0.5, -0.7])
    beta = 0.8
    state = dpo_state(rewards, labels.weights(), beta, logits, 10.0, 0, 0)
    policy, ref = torch.log_softmax(logits, -1), reference_logprobs()
    for pair in state["pairs"]:
        c, r = pair["chosen"], pair["rejected"]
        delta = float((policy[c] - policy[r]) - (ref[c] - ref[r]))
        assert pair["weight"] == pytest.approx(1 / (1 + math.exp(beta * delta)), abs=1e-12)


def test_reward_hacking_curve_rises_then_falls_in_gold_while_the_proxy_keeps_rising():
    state = hacking.hacking_state(1.0, length_bias=4.0)
    curve = state["curve"]
    sqrt_kl = [p["sqrt_kl"] for p in curve]
    assert sqrt_kl == sorted(sqrt_kl)  # lower beta, further from pi_ref
    proxy = [p["proxy"] for p in curve]
    assert all(b >= a - 1e-12 for a, b in zip(proxy, proxy[1:], strict=False))
    gold = [p["gold"] for p in curve]
    peak = gold.index(max(gold))
    assert 0 < peak < len(gold) - 1
    assert gold[peak] > gold[0] + 0.3 and gold[-1] < gold[peak] - 0.5
    assert curve[-1]["longest_prob"] > 0.99 and LONGEST == max(range(6), key=lambda i: ANSWERS[i].words)
    # Without the length bias the proxy is the gold reward: nothing to hack, gold never falls.
    honest = [p["gold"] for p in hacking.hacking_state(1.0, length_bias=0.0)["curve"]]
    assert all(b >= a - 1e-12 for a, b in zip(honest, honest[1:], strict=False))


def test_api_answers_json_and_refuses_bad_input(tmp_path):
    client = TestClient(create_app(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), base_url="http://testserver"))
    state = client.get("/playground/api/preferences", params={"labels": "0>3", "simulated": 0}).json()
    assert state["total"] == 1 and state["counts"][0][3] == 1
    assert client.get("/playground/api/preferences", params={"labels": "0>zz"}).status_code == 400
    assert client.get("/playground/api/optimum", params={"logits": "1,2"}).status_code == 400
    assert client.get("/playground/api/optimum", params={"beta": "0"}).status_code == 400
    assert client.get("/playground/api/dpo", params={"steps": 10_000}).status_code == 422
    stepped = client.get("/playground/api/hacking", params={"beta": 30, "steps": 2}).json()
    assert stepped["beta"] == pytest.approx(30 / 1.3**2)
    baselines = client.get("/playground/api/baselines", params={"group_size": 4, "value_error": 0.5}).json()
    assert [r["baseline"] for r in baselines["rows"]] == ["none", "value", "group_mean", "leave_one_out", "group_mean_std"]
    assert client.get("/playground/api/baselines", params={"group_size": 1}).status_code == 422
    assert client.get("/playground/api/baselines", params={"value_error": 9}).status_code == 400
    page = client.get("/playground")
    assert page.status_code == 200 and "Explain photosynthesis to a 5-year-old." in page.text


# ---- the page in Chromium -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """One playground page in Chromium against a live server, shared by the browser tests (in order)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)")
    import uvicorn
    from playwright.sync_api import sync_playwright

    store = Store(f"sqlite:///{tmp_path_factory.mktemp('pg') / 'live.db'}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(store), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        opened = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.on(
            "console",
            lambda m: (
                m.type == "error"
                and "favicon" not in m.text
                and "404" not in m.text
                and errors.append(m.text)
            ),
        )
        opened.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/playground")
        for module in ("m1", "m2", "m3", "m4", "m5"):
            wait_updated(opened, module, 0)
        opened.errors = errors
        yield opened
        browser.close()
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()
    store.close()


def wait_updated(page, module: str, after: int) -> int:
    """Wait until `module` applied a reply beyond `after` and has nothing in flight; its count."""
    page.wait_for_function(
        "([id, after]) => { const s = document.getElementById(id);"
        " return s.dataset.busy === '0' && Number(s.dataset.updates) > after; }",
        arg=[module, after],
        timeout=60_000,
    )
    return updates(page, module)


def updates(page, module: str) -> int:
    return int(page.get_attribute(f"#{module}", "data-updates"))


def shown(page, element_id: str) -> float:
    """The exact value behind a number on the page, after checking the text is that value rounded."""
    value = float(page.get_attribute(f"#{element_id}", "data-value"))
    text = page.inner_text(f"#{element_id}")
    assert abs(float(text) - value) <= 0.5 * 10 ** -(len(text.split(".")[1]) if "." in text else 0) + 1e-12, (
        element_id
    )
    return value


def request_of(page, module: str) -> dict[str, str]:
    query = parse_qs(page.get_attribute(f"#{module}", "data-request"), keep_blank_values=True)
    return {k: v[-1] for k, v in query.items()}


def label_set_of(request: dict[str, str]) -> LabelSet:
    return LabelSet(parse_labels(request["labels"]), simulated=int(request["simulated"]),
                    noise=float(request["noise"]), seed=int(request["seed"]), prior=float(request["prior"]))  # fmt: skip


def move_slider(page, element_id: str, value: float) -> None:
    page.eval_on_selector(
        f"#{element_id}",
        "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }",
        value,
    )


def screenshot(page, module: str, name: str) -> None:
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.locator(f"#{module}").screenshot(path=str(DOCS_IMG / name))


@needs_chromium
def test_each_module_loads_and_shows_the_library_numbers(page):
    assert page.errors == []
    # Module 1: the page's rewards are the BT fit of the labels it sent, and its loss is the
    # library's Bradley–Terry loss at those rewards.
    request = request_of(page, "m1")
    labels = label_set_of(request)
    rewards = [shown(page, f"m1-reward-{i}") for i in range(6)]
    assert rewards == pytest.approx(fit_rewards(labels.weights()).tolist(), abs=1e-12)
    counts = vote_counts(labels.labels())
    weights = tensor([counts[c][r] + labels.prior for c, r in ORDERED_PAIRS])
    chosen, rejected = (
        tensor(rewards)[[c for c, _ in ORDERED_PAIRS]],
        tensor(rewards)[[r for _, r in ORDERED_PAIRS]],
    )
    loss = (bradley_terry(chosen, rejected)[0] * weights).sum() / weights.sum()
    assert shown(page, "m1-loss") == pytest.approx(float(loss), abs=1e-12)
    assert shown(page, "m1-total") == len(labels.labels()) == 30

    # Module 2: pi* = softmax(log pi_ref + r / beta), its KL the exact k1 expectation.
    request = request_of(page, "m2")
    beta = shown(page, "m2-beta-value")
    assert beta == float(request["beta"]) == 1.0
    fitted = fit_rewards(label_set_of(request).weights())
    expected = torch.softmax(reference_logprobs() + fitted / beta, -1)
    assert [shown(page, f"m2-optimal-{i}") for i in range(6)] == pytest.approx(expected.tolist(), abs=1e-12)
    assert shown(page, "m2-optimal-kl") == pytest.approx(
        float((expected * kl_k1(expected.log(), reference_logprobs())).sum()), abs=1e-12
    )
    assert [shown(page, f"m2-policy-{i}") for i in range(6)] == pytest.approx(
        reference_logprobs().exp().tolist(), abs=1e-12
    )

    # Module 3: the loss is sigmoid_loss weighted by the votes, at the policy shown.
    request = request_of(page, "m3")
    labels = label_set_of(request)
    policy = tensor([shown(page, f"m3-policy-{i}") for i in range(6)]).log()
    ref = reference_logprobs()
    c, r = [i for i, _ in ORDERED_PAIRS], [j for _, j in ORDERED_PAIRS]
    per_pair, _ = sigmoid_loss(policy[c], policy[r], ref[c], ref[r], beta=float(request["beta"]))
    expected_loss = (per_pair * labels.weights()).sum() / labels.weights().sum()
    assert shown(page, "m3-loss") == pytest.approx(float(expected_loss), abs=1e-9)

    # Module 4: the current point is hacking.point for the beta and bias sent.
    request = request_of(page, "m4")
    point = hacking.point(float(request["beta"]), float(request["length_bias"]))
    for name, key in [("m4-gold", "gold"), ("m4-proxy", "proxy"), ("m4-kl", "kl"), ("m4-sqrt-kl", "sqrt_kl")]:
        assert shown(page, name) == pytest.approx(point[key], abs=1e-12)

    # Module 5: each row's variance is playground.baselines' for the group size and critic error sent;
    # a larger critic error raises the critic's row and leaves RLOO's alone.
    from preftune.playground.baselines import baseline_numbers

    def variance(row: str) -> float:
        return float(page.get_attribute(f"#m5-row-{row} td.num", "data-value"))

    request = request_of(page, "m5")
    size, error = int(request["group_size"]), float(request["value_error"])
    assert variance("leave_one_out") == pytest.approx(baseline_numbers("leave_one_out", size)["variance"], rel=1e-12)
    assert variance("value") == pytest.approx(baseline_numbers("value", size, error)["variance"], rel=1e-12)
    before = variance("value"), variance("leave_one_out")
    count = updates(page, "m5")
    move_slider(page, "m5-error", 2.5)
    wait_updated(page, "m5", count)
    assert variance("value") > before[0] and variance("leave_one_out") == before[1]


@needs_chromium
def test_sliders_change_the_numbers(page):
    spread = shown(page, "m1-spread")
    before = {m: updates(page, m) for m in ("m1", "m2", "m3")}
    move_slider(page, "m1-noise", 2.0)
    for module, count in before.items():
        wait_updated(page, module, count)
    assert shown(page, "m1-spread") < spread  # noisier labels, flatter rewards
    expected = preference_state(label_set_of(request_of(page, "m1")))
    assert [shown(page, f"m1-reward-{i}") for i in range(6)] == pytest.approx(expected["rewards"], abs=1e-12)
    before = {m: updates(page, m) for m in ("m1", "m2", "m3")}
    move_slider(page, "m1-noise", 0.5)
    for module, count in before.items():
        wait_updated(page, module, count)

    optimal = [shown(page, f"m2-optimal-{i}") for i in range(6)]
    count = updates(page, "m2")
    move_slider(page, "m2-beta", -0.5)  # beta = 10^-0.5
    wait_updated(page, "m2", count)
    beta = shown(page, "m2-beta-value")
    assert beta == pytest.approx(10**-0.5)
    now = [shown(page, f"m2-optimal-{i}") for i in range(6)]
    assert now != pytest.approx(optimal, abs=1e-3)
    fitted = fit_rewards(label_set_of(request_of(page, "m2")).weights())
    assert now == pytest.approx(optimal_policy(fitted, beta).tolist(), abs=1e-12)
    count = updates(page, "m2")
    move_slider(page, "m2-beta", 0)
    wait_updated(page, "m2", count)

    gold = shown(page, "m4-peak-gold")
    count = updates(page, "m4")
    move_slider(page, "m4-bias", 6.0)
    wait_updated(page, "m4", count)
    assert shown(page, "m4-peak-gold") != pytest.approx(gold, abs=1e-4)
    assert shown(page, "m4-peak-gold") == pytest.approx(
        hacking.hacking_state(30.0, 6.0)["peak"]["gold"], abs=1e-12
    )
    count = updates(page, "m4")
    move_slider(page, "m4-bias", 4.0)
    wait_updated(page, "m4", count)


@needs_chromium
def test_step_advances_each_module(page):
    total = shown(page, "m1-total")
    count = updates(page, "m1")
    page.click("#m1-step")
    wait_updated(page, "m1", count)
    assert shown(page, "m1-total") == total + 5
    # A click on "A is better than B" adds exactly that label.
    for module in ("m2", "m3"):
        wait_updated(page, module, 0)
    left = page.inner_text("#m1-left-title")
    counts = {m: updates(page, m) for m in ("m1", "m2", "m3")}
    page.click("#m1-left-wins")
    for module, count in counts.items():  # the label reaches modules 2 and 3 too
        wait_updated(page, module, count)
    request = request_of(page, "m1")
    winner, loser = parse_labels(request["labels"])[-1]
    assert ANSWERS[winner].title == left and shown(page, "m1-user") == 1
    assert request_of(page, "m2")["labels"] == request_of(page, "m3")["labels"] == request["labels"]
    distance = shown(page, "m2-distance")
    count = updates(page, "m2")
    page.click("#m2-step")
    wait_updated(page, "m2", count)
    assert shown(page, "m2-iteration") == 1
    assert shown(page, "m2-distance") < distance
    request = request_of(page, "m2")
    state = optimum_state(fit_rewards(label_set_of(request).weights()), float(request["beta"]),
                          tensor([float(v) for v in request["logits"].split(",")]), float(request["lr"]),
                          int(request["iteration"]), int(request["steps"]))  # fmt: skip
    assert [shown(page, f"m2-policy-{i}") for i in range(6)] == pytest.approx(state["policy"], abs=1e-12)
    for _ in range(3):
        count = updates(page, "m2")
        page.click("#m2-step")
        wait_updated(page, "m2", count)
    screenshot(page, "m2", "playground_optimum.png")

    loss = shown(page, "m3-loss")
    count = updates(page, "m3")
    page.click("#m3-step")
    wait_updated(page, "m3", count)
    assert shown(page, "m3-step-count") == 20 and shown(page, "m3-loss") < loss

    beta = shown(page, "m4-beta-value")
    for _ in range(12):
        count = updates(page, "m4")
        page.click("#m4-step")
        wait_updated(page, "m4", count)
    assert shown(page, "m4-beta-value") == pytest.approx(beta / 1.3**12)
    screenshot(page, "m4", "playground_hacking.png")
    screenshot(page, "m1", "playground_preferences.png")


@needs_chromium
def test_dpo_module_converges_to_module_2s_pi_star(page):
    move_slider(page, "m3-per-step", 200)
    page.click("#m3-play")
    page.wait_for_function(
        "() => document.getElementById('m3-status').textContent.startsWith('converged')", timeout=60_000
    )
    page.wait_for_function("() => document.getElementById('m3-play').textContent === 'Play'")
    wait_updated(page, "m3", 0)
    assert shown(page, "m3-beta-value") == shown(page, "m2-beta-value")
    dpo_policy = [shown(page, f"m3-policy-{i}") for i in range(6)]
    module2_optimum = [shown(page, f"m2-optimal-{i}") for i in range(6)]
    assert max(abs(p - q) for p, q in zip(dpo_policy, module2_optimum, strict=True)) < 1e-2
    # Both modules trained on the same labels (module 1's), so the agreement is the DPO result.
    assert request_of(page, "m3")["labels"] == request_of(page, "m2")["labels"] != ""
    screenshot(page, "m3", "playground_dpo.png")
    assert page.errors == []

"""The playground (`/playground`): five modules that animate preference learning on six answers.

The page is static HTML plus `playground_modules.js`; every number it shows comes from the JSON endpoints
below, which call `preftune.playground` (and through it the library's loss code). The server keeps
no state: each request carries the module's state (labels, policy logits, step counters) in its
query string and gets the next state back, so Step, Play and Reset are plain GET requests and any
number of visitors can play at once. Nothing here needs a login.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, HTTPException, Query, Request

from preftune.web.render import render
from preftune.web.routes.dashboard import plotly_guards

router = APIRouter(prefix="/playground")

MAX_STEPS = 500  # per request: Play asks again rather than blocking a worker thread


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise HTTPException(400, message)


def _number(value: float, name: str, low: float, high: float) -> float:
    _check(math.isfinite(value) and low <= value <= high, f"{name} must be in [{low}, {high}], got {value}")
    return value


def _logits(text: str):
    """Policy logits from 'a,b,c,d,e,f', or pi_ref's log-probs when empty (the Reset state)."""
    import torch

    from preftune.playground.answers import ANSWERS
    from preftune.playground.optimum import reference_logprobs
    from preftune.playground.preferences import DTYPE

    if not text:
        return reference_logprobs()
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise HTTPException(400, f"logits must be {len(ANSWERS)} comma-separated numbers") from None
    _check(
        len(values) == len(ANSWERS),
        f"logits must be {len(ANSWERS)} comma-separated numbers, got {len(values)}",
    )
    _check(all(math.isfinite(v) and abs(v) < 1e6 for v in values), "logits must be finite numbers")
    return torch.tensor(values, dtype=DTYPE)


def _label_set(labels: str, simulated: int, noise: float, seed: int, prior: float):
    from preftune.playground.preferences import LabelSet, parse_labels

    try:
        return LabelSet(parse_labels(labels), simulated=simulated, noise=noise, seed=seed, prior=prior)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None


def _fitted_rewards(label_set):
    from preftune.playground.preferences import fit_rewards

    return fit_rewards(label_set.weights())


@router.get("")
def page(request: Request):
    from preftune.playground.answers import PROMPT, answers_payload

    return render(
        request, "playground_page.html", title="Playground", prompt=PROMPT, answers=answers_payload(),
        plotly_guards=plotly_guards(),
    )  # fmt: skip


@router.get("/api/preferences")
def preferences(
    labels: str = "",
    simulated: int = 30,
    noise: float = 0.5,
    seed: int = 0,
    prior: float = 0.5,
    add_simulated: int = 0,
):
    """Module 1: Bradley–Terry rewards for the labels; `add_simulated` asks the labeler for more."""
    from preftune.playground.preferences import preference_state

    _check(0 <= add_simulated <= MAX_STEPS, f"add_simulated must be in [0, {MAX_STEPS}]")
    return preference_state(_label_set(labels, simulated + add_simulated, noise, seed, prior))


@router.get("/api/optimum")
def optimum(
    labels: str = "", simulated: int = 30, noise: float = 0.5, seed: int = 0, prior: float = 0.5,
    beta: float = 1.0, lr: float = 1.0, logits: str = "", iteration: int = 0, steps: int = Query(0, ge=0, le=MAX_STEPS),
):  # fmt: skip
    """Module 2: pi* for beta from module 1's rewards, and the PPO policy after `steps` iterations."""
    from preftune.playground.optimum import optimum_state

    rewards = _fitted_rewards(_label_set(labels, simulated, noise, seed, prior))
    return optimum_state(
        rewards,
        _number(beta, "beta", 0.01, 100),
        _logits(logits),
        _number(lr, "lr", 0.0, 100),
        iteration,
        steps,
    )


@router.get("/api/dpo")
def dpo(
    labels: str = "", simulated: int = 30, noise: float = 0.5, seed: int = 0, prior: float = 0.5,
    beta: float = 1.0, step_size: float = 10.0, logits: str = "", step: int = 0,
    steps: int = Query(0, ge=0, le=MAX_STEPS),
):  # fmt: skip
    """Module 3: DPO on module 1's labels after `steps` more gradient steps."""
    from preftune.playground.dpo import dpo_state

    label_set = _label_set(labels, simulated, noise, seed, prior)
    state = dpo_state(
        _fitted_rewards(label_set), label_set.weights(), _number(beta, "beta", 0.01, 100), _logits(logits),
        _number(step_size, "step_size", 0.0, 100), step, steps,
    )  # fmt: skip
    return state | {"prior": prior}  # pair votes include the prior; the page shows the real ones


@router.get("/api/hacking")
def hacking(beta: float = 30.0, length_bias: float = 4.0, steps: int = Query(0, ge=0, le=100)):
    """Module 4: the proxy-optimal policy's gold and proxy value along sqrt(KL); Step lowers beta."""
    from preftune.playground.hacking import BETA_MAX, BETA_MIN, hacking_state, next_beta

    beta = _number(beta, "beta", BETA_MIN, BETA_MAX)
    for _ in range(steps):
        beta = next_beta(beta)
    return hacking_state(beta, _number(length_bias, "length_bias", 0.0, 20.0))


@router.get("/api/baselines")
def baselines(group_size: int = Query(8, ge=2, le=64), value_error: float = 1.0):
    """Module 5: gradient variance and bias of each policy-gradient baseline at this group size and critic error."""
    from preftune.playground.baselines import baselines_state

    return baselines_state(group_size, _number(value_error, "value_error", 0.0, 5.0))

"""Fixtures the trainer tests share: the online trainers' prompts, one thread, a SIGTERM mid-step."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from preftune.train import common

TOPICS = ["the sky", "magnets", "plants", "rain", "the moon", "bread", "trains", "bees"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads per
    process thrash (measured here: 20x slower); restore the caller's setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory, request):
    """One "Tell me about ..." prompt per topic; a test module that sets PROMPT_REPEATS gets the
    list that many times (PPO's rollouts of 8 want more prompts than one pass holds)."""
    repeats = getattr(request.module, "PROMPT_REPEATS", 1)
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("".join(f"Tell me about {topic}.\n" for topic in TOPICS * repeats))
    return path


@pytest.fixture
def sigterm_at_clip(monkeypatch):
    """`restore = sigterm_at_clip(n)`: the real signal path, SIGTERM sent to this process during
    the n-th gradient clip (inside an optimizer step, where a user's kill lands); `restore()` puts
    the real clip back before the resumed run."""
    real_clip = common.grad_norm_and_clip

    def install(n: int):
        calls = {"n": 0}

        def clip_then_signal(model, max_norm):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_clip(model, max_norm)

        monkeypatch.setattr(common, "grad_norm_and_clip", clip_then_signal)
        return lambda: monkeypatch.setattr(common, "grad_norm_and_clip", real_clip)

    return install


@pytest.fixture
def nan_loss_at_call(monkeypatch):
    """`nan_loss_at_call(owner, name, n)`: the n-th call of the loss `owner[name]` (a dict of
    losses) or `owner.name` (a module's) returns NaN losses, its metrics untouched: the path a
    real divergence takes, from the loss into the loop's guard."""

    def install(owner, name: str, n: int) -> None:
        is_table = isinstance(owner, dict)
        real_loss = owner[name] if is_table else getattr(owner, name)
        calls = {"n": 0}

        def poisoned(*args, **kwargs):
            calls["n"] += 1
            losses, metrics = real_loss(*args, **kwargs)
            return (losses * float("nan") if calls["n"] == n else losses), metrics

        (monkeypatch.setitem if is_table else monkeypatch.setattr)(owner, name, poisoned)

    return install

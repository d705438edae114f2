"""Shared fixtures: the tiny model and tokenizer, the real data folder, SmolLM2 when requested."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread: the tests use tiny models, where a second thread buys nothing, and on a shared
# 2-core machine two OpenMP threads per process thrash (measured: 116 s vs 17 s for one file).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# Real data lives beside the repository (../shared/data), in the session and on CI alike.
SHARED_DATA = Path(os.environ.get("PREFTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "dpo_en_demo.json").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set PREFTUNE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from preftune.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_tokenizer):
    from preftune.models.tiny import tiny_model

    return lambda seed=0: tiny_model(tiny_tokenizer, seed=seed)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (the one-time fetch + conversion is cached)."""
    from preftune.models.load import load_tokenizer

    return load_tokenizer("smollm2-135m")

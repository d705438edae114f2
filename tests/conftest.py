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


# A CPU that names no bf16 units: what every test runs on unless it says otherwise (below).
CPUINFO_WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.fixture(autouse=True)
def fp32_unless_a_test_asks(request, monkeypatch, tmp_path_factory):
    """Pin `--precision auto` to fp32: tests compare numbers at fp32 tolerances, and auto would
    pick bf16 on a CPU with bf16 units (this project's machines have them). Every test reads a
    /proc/cpuinfo without bf16 units, so auto still runs through the automatic choice and its
    answer is fp32 on any machine. Tests of the choice itself either point `precision.CPUINFO`
    at their own contents or carry `@pytest.mark.real_cpuinfo`. Subprocesses do not see this:
    tests that start one pass `--precision fp32` themselves."""
    if request.node.get_closest_marker("real_cpuinfo"):
        return
    from preftune import precision

    fake = tmp_path_factory.getbasetemp() / "cpuinfo-without-bf16"
    if not fake.exists():
        fake.write_text(CPUINFO_WITHOUT_BF16)
    monkeypatch.setattr(precision, "CPUINFO", fake)


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

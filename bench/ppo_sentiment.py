"""PPO with LoRA on the real SmolLM2-135M-Instruct, rewarded by VADER sentiment (judge:sentiment).

Ziegler et al. 2019's positive-sentiment continuation task, at laptop scale: each prompt asks for a
continuation of the first words of a movie-review snippet; the reward is VADER's compound score of
the completion. Prints the curve (held-out score and KL per eval, training score and KL per
iteration) and the verdict: did the held-out mean score rise by >= 0.2 with objective/kl < 10 nats?

    .venv/bin/python bench/ppo_sentiment.py [--minutes 30] [--threads 1] [--out runs/bench-ppo-sentiment]

Data: ../shared/data/movie_review_snippets.tsv (id, rating, sentence). Training prompts from
sentences 0..1999, held-out prompts from the last --eval sentences, --words first words each.

The run is bounded by wall time, not iterations: when --minutes minus a reserve for the final
evaluation has passed, the script sends itself SIGTERM (the trainer checkpoints and exits, as on
any signal), then resumes with --iterations set to the last completed one, which runs the final
held-out evaluation and writes final/. So the figure also exercises stop-and-resume.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "movie_review_snippets.tsv"
SYSTEM = "You write movie reviews."
INSTRUCTION = "Continue this movie review: "


def snippet_prompts(path: Path, words: int) -> list[str]:
    """The first `words` words of every snippet, as a continuation request."""
    with path.open(encoding="utf-8") as handle:
        sentences = [row[2] for row in csv.reader(handle, delimiter="\t") if len(row) >= 3]
    return [INSTRUCTION + " ".join(s.split()[:words]) for s in sentences]


def write_prompts(prompts: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short system turn: SmolLM2's template would otherwise insert its default one (11 tokens more).
    rows = [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]} for p in prompts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-time budget, loading and evals included")
    parser.add_argument("--reserve", type=float, default=5.0, help="minutes kept for the last iteration and final eval")
    parser.add_argument("--iterations", type=int, default=1000, help="upper bound; the time budget usually ends first")
    parser.add_argument("--rollout-batch", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--kl-coef", type=float, default=0.1)
    parser.add_argument("--value", default="shared")
    parser.add_argument("--eval", type=int, default=32, help="held-out prompts (the last sentences of the file)")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--words", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest on a busy 2-core box")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-ppo-sentiment"))
    args = parser.parse_args()

    import torch

    from preftune.config import PPOConfig, resolve_config
    from preftune.runlog import read_metrics
    from preftune.train.ppo import train_ppo

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    prompts = snippet_prompts(Path(args.data), args.words)
    train_file = write_prompts(prompts[:2000], out.parent / "bench-ppo-train-prompts.jsonl")
    eval_file = write_prompts(prompts[-args.eval :], out.parent / "bench-ppo-eval-prompts.jsonl")
    config = resolve_config(PPOConfig, None, dict(
        model="smollm2-135m", reward="judge:sentiment", prompts=str(train_file), eval_data=str(eval_file),
        out=str(out), lora=True, value=args.value, iterations=args.iterations, rollout_batch=args.rollout_batch,
        batch_size=args.batch_size, ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens, lr=args.lr,
        scheduler="constant", kl_coef=args.kl_coef, eval_every=args.eval_every, max_prompt_length=128, seed=0,
    ))  # fmt: skip
    start = time.perf_counter()
    timer = threading.Timer((args.minutes - args.reserve) * 60, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        train_ppo(config, show_progress=sys.stderr.isatty())
    except SystemExit:  # the time budget's SIGTERM: checkpointed; resume to finish (final eval, final/)
        from preftune.train.common import checkpoint_dirs

        reached = int(checkpoint_dirs(out)[-1].name.removeprefix("step-"))
        print(f"time budget reached after iteration {reached}; finishing", file=sys.stderr)
        train_ppo(dataclasses.replace(config, resume=True, iterations=reached), show_progress=False)
    finally:
        timer.cancel()
    wall = time.perf_counter() - start

    rows = read_metrics(out)
    train_rows = [r for r in rows if "objective/kl" in r]
    evals = [r for r in rows if "eval/scores" in r]
    print("\niteration  score   kl     kl_coef  entropy  length  approxkl  seconds")
    for r in train_rows:
        seconds = r["time/rollout"] + r["time/update"]
        print(f"{r['step']:>9}  {r['objective/scores']:+.3f}  {r['objective/kl']:5.2f}  {r['kl_coef']:.3f}    "
              f"{r['objective/entropy']:6.1f}   {r['completions/mean_length']:5.1f}   {r['policy/approxkl_avg']:.4f}    {seconds:5.1f}")  # fmt: skip
    print("\nheld-out eval (same prompts and seed each time)")
    print("iteration  policy score  reference score  KL (nats)")
    for r in evals:
        print(f"{r['step']:>9}  {r['eval/scores']:+.3f}        {r['eval/ref_scores']:+.3f}           {r['eval/kl']:.2f}")
    rise = evals[-1]["eval/scores"] - evals[0]["eval/scores"]
    max_kl = max(r["objective/kl"] for r in train_rows)
    last_kl = statistics.mean(r["objective/kl"] for r in train_rows[-3:])
    print(f"\nwall time {wall / 60:.1f} min, {len(train_rows)} iterations x {args.rollout_batch} completions")
    print(f"held-out mean VADER: {evals[0]['eval/scores']:+.3f} -> {evals[-1]['eval/scores']:+.3f} (rise {rise:+.3f})")
    print(f"objective/kl: max {max_kl:.2f}, mean of last 3 iterations {last_kl:.2f} nats")
    verdict = rise >= 0.2 and max_kl < 10 and wall < 30 * 60
    print(f"done-when (rise >= 0.2, KL < 10 nats, < 30 min): {'PASS' if verdict else 'FAIL'}")


if __name__ == "__main__":
    main()

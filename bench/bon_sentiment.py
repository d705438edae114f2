"""Best-of-n on the PPO sentiment task: mean VADER score of the kept completion for n = 1..16,
each next to the KL of best-of-n, log n - (n-1)/n. SmolLM2-135M-Instruct, no training.

Samples 16 completions for each held-out prompt of bench/ppo_sentiment.py (same prompts, same
sampling: temperature 1, no top-k/top-p, same max tokens), scores them with judge:sentiment, and
reads every n off the same samples with the exact subset-average estimator
(`preftune.bon.expected_best_of_n`), so the rows differ by n alone, not by sampling noise.

    .venv/bin/python bench/bon_sentiment.py [--prompts 32] [-n 16] [--reward judge:sentiment] [--threads 1]

With --reward rm:DIR the reward model picks and VADER (the gold judge) scores the pick, Gao et
al. 2022's proxy-vs-gold comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_sentiment import DATA, REPO, SYSTEM, snippet_prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts (the last sentences of the file)")
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--reward", default="judge:sentiment")
    parser.add_argument("--gold", default="judge:sentiment")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--words", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-bon-sentiment.jsonl"))
    args = parser.parse_args()

    import torch

    from preftune.bon import best_of_n, summarize
    from preftune.data.schema import Message
    from preftune.judges.registry import get_judge
    from preftune.models.load import load_policy

    torch.set_num_threads(args.threads)
    texts = snippet_prompts(Path(args.data), args.words)[-args.prompts :]
    prompts = [[Message("system", SYSTEM), Message("user", text)] for text in texts]
    reward = get_judge(args.reward, batch_size=args.batch_size)
    gold = get_judge(args.gold) if args.gold != args.reward else None
    model, tokenizer = load_policy("smollm2-135m")
    start = time.perf_counter()
    rows = best_of_n(
        model, tokenizer, prompts, reward, args.n, gold=gold, max_new_tokens=args.max_new_tokens,
        temperature=1.0, seed=args.seed, batch_size=args.batch_size, max_prompt_length=128,
        show_progress=sys.stderr.isatty(),
    )  # fmt: skip
    wall = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    summary = summarize(rows)
    gold_key = "expected_gold_score" if gold is not None else "expected_best_score"
    print(f"\n{len(rows)} prompts x {args.n} samples in {wall / 60:.1f} min; reward {args.reward}, gold {args.gold}")
    print("   n   KL bound (nats)   mean gold score of the kept sample")
    for entry in summary["by_n"]:
        print(f"{entry['n']:>4}   {entry['kl_bound']:.3f}             {entry[gold_key]:+.3f}")
    print(f"samples: {out}")


if __name__ == "__main__":
    main()

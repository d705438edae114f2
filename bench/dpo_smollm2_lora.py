"""DPO with LoRA on the real SmolLM2-135M-Instruct: one epoch over 64 pairs of dpo_en_demo.json,
evaluated on 32 held-out pairs. Prints one table: wall time, pairs/s, tokens/s, eval accuracy.

    .venv/bin/python bench/dpo_smollm2_lora.py [--train 64] [--eval 32] [--max-length 512] [--out runs/bench-dpo]

Data: ../shared/data/dpo_en_demo.json (LLaMA-Factory's demo set, Apache-2.0); pairs 0..63 train,
64..95 held out, in file order.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "dpo_en_demo.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-dpo-smollm2-lora"))
    args = parser.parse_args()

    from preftune.config import DPOConfig, resolve_config
    from preftune.data.formats import read_pairs
    from preftune.data.schema import write_jsonl
    from preftune.runlog import read_metrics
    from preftune.train.dpo import train_dpo

    pairs, _ = read_pairs(args.data)
    out = Path(args.out)
    write_jsonl(pairs[: args.train], out.parent / "bench-dpo-train.jsonl")
    write_jsonl(pairs[args.train : args.train + args.eval], out.parent / "bench-dpo-eval.jsonl")
    config = resolve_config(DPOConfig, None, dict(
        model="smollm2-135m", data=str(out.parent / "bench-dpo-train.jsonl"),
        eval_data=str(out.parent / "bench-dpo-eval.jsonl"), out=str(out), lora=True, epochs=1,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, beta=0.1, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length, warmup_ratio=0.1,
    ))  # fmt: skip
    start = time.perf_counter()
    train_dpo(config, show_progress=True)
    wall = time.perf_counter() - start
    rows = read_metrics(out)
    train_rows = [r for r in rows if "loss" in r]
    final_eval = [r for r in rows if "eval/rewards/accuracies" in r][-1]
    tokens = train_rows[-1]["num_tokens"]
    table = [
        ("pairs (train / eval)", f"{args.train} / {args.eval}"),
        ("max_length / batch x accumulation", f"{args.max_length} / {args.batch_size} x {args.grad_accum}"),
        ("wall time (incl. load, eval)", f"{wall:.0f} s"),
        ("train pairs/s (wall)", f"{args.train / wall:.3f}"),
        ("train tokens", f"{tokens}"),
        ("loss first / last step", f"{train_rows[0]['loss']:.4f} / {train_rows[-1]['loss']:.4f}"),
        ("eval rewards/accuracies", f"{final_eval['eval/rewards/accuracies']:.3f}"),
        ("eval rewards/margins", f"{final_eval['eval/rewards/margins']:.4f}"),
    ]
    width = max(len(k) for k, _ in table)
    print("\n| measure | value |\n|---|---|")
    for key, value in table:
        print(f"| {key.ljust(width)} | {value} |")
    json.dump(dict(table), sys.stderr)


if __name__ == "__main__":
    main()

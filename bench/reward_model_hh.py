"""Reward model on real human labels: Anthropic HH-RLHF harmlessness pairs, held-out accuracy.

    .venv/bin/python bench/reward_model_hh.py [--test-pairs 600] [--train-pairs 0] [--threads 1]
        [--out runs/bench-rm-hh] [any `preftune rm` setting as --key value, e.g. --lr 1e-4]

Data: ../shared/data/hh_harmless_dev.jsonl (the first 1,800 rows of Anthropic's
`harmless-base/test.jsonl.gz`, MIT; Bai et al. 2022). Whole transcripts; the `hh` reader splits
each into the shared prompt and the two final assistant turns, and reports the rows it drops.

Split: the kept pairs are shuffled with --split-seed; the first --test-pairs are held out, the rest
(capped by --train-pairs, 0 = all) train. The two never meet.

Steps: write both splits as canonical JSONL -> `train_reward_model` (exactly `preftune rm`; the
equivalent command is printed and saved) -> load final/ and score every held-out pair (r_chosen -
r_rejected, through the one tokenization path) -> print:
- held-out pairwise accuracy with its Wilson 95% CI (strict: a tie is wrong), beside the two
  length baselines "shorter final turn wins" and "longer final turn wins" (characters; equal
  lengths count half);
- the distance to the better baseline in standard errors, twice: with the model's own binomial
  SE, and with the paired SE of the per-pair difference (the stricter one when they differ);
- a calibration table: the Bradley-Terry probability sigmoid(|r_a - r_b|) that the higher-scored
  answer is the chosen one, in bins, against the observed rate, and the expected calibration error.
Writes results.json and test_gaps.jsonl (per held-out pair: gap, lengths) under --out.

Settings for the reward model default to the recipe documented in README.md (`preftune rm`
section); every other `preftune rm` setting can be given as --key value.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh_harmless_dev.jsonl"
# The recipe under test (the README's documented command for HH-style data); flags override it.
RECIPE = dict(
    model="smollm2-135m", lora=True, lora_top_layers=8, lora_r=16, lora_alpha=32, lr=2e-4, batch_size=8,
    epochs=2.0, max_length=256, max_prompt_length=160, warmup_ratio=0.1, center_coef=0.01, log_every=10,
)  # fmt: skip
BINS = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def rm_overrides(extra: list[str]) -> dict:
    """`--key value` / `--flag` / `--no-flag` pairs left over by argparse -> RMConfig settings."""
    settings, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            sys.exit(f"error: unexpected argument {token!r} (settings are --key value)")
        key = token[2:].replace("-", "_")
        if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            settings[key], i = _value(extra[i + 1]), i + 2
        elif key.startswith("no_"):
            settings[key[3:]], i = False, i + 1
        else:
            settings[key], i = True, i + 1
    return settings


def as_flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return flags


def calibration(gaps: list[float]) -> tuple[list[dict], float]:
    """Bins of the BT probability that the higher-scored answer is chosen, and the ECE."""
    rows, ece = [], 0.0
    confidence = [1 / (1 + math.exp(-abs(g))) for g in gaps]
    correct = [g > 0 for g in gaps]
    for low, high in zip(BINS[:-1], BINS[1:], strict=True):
        members = [i for i, c in enumerate(confidence) if low <= c < high or (high == 1.0 and c == 1.0)]
        if not members:
            rows.append({"bin": f"{low:.1f}-{high:.1f}", "pairs": 0, "predicted": None, "observed": None, "ci95": None})
            continue
        predicted = sum(confidence[i] for i in members) / len(members)
        observed = sum(correct[i] for i in members) / len(members)
        from preftune.eval.winrate import wilson_interval

        rows.append({"bin": f"{low:.1f}-{high:.1f}", "pairs": len(members), "predicted": predicted,
                     "observed": observed, "ci95": wilson_interval(observed, len(members))})  # fmt: skip
        ece += len(members) / len(gaps) * abs(predicted - observed)
    return rows, ece


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--test-pairs", type=int, default=600)
    parser.add_argument("--train-pairs", type=int, default=0, help="cap on training pairs (0 = all the rest)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--score-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-rm-hh"))
    args, extra = parser.parse_known_args()
    settings = RECIPE | rm_overrides(extra)

    import torch

    from preftune.config import RMConfig, resolve_config
    from preftune.data.formats import read_pairs
    from preftune.data.schema import write_jsonl
    from preftune.eval.baselines import longer, rule_outcomes, shorter
    from preftune.eval.winrate import wilson_interval
    from preftune.models.reward_model import load_scalar_model
    from preftune.train import common
    from preftune.train.reward import pair_gaps, train_reward_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pairs, report = read_pairs(args.data, format="hh")
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(report.dropped.items())) if report.dropped else "none"
    print(f"{args.data}: {report.rows_read} rows, {len(pairs)} pairs kept, dropped: {dropped}", file=sys.stderr)
    order = list(range(len(pairs)))
    random.Random(args.split_seed).shuffle(order)
    if not 0 < args.test_pairs < len(pairs):
        sys.exit(f"error: --test-pairs {args.test_pairs} must be between 1 and {len(pairs) - 1}")
    test = [pairs[i] for i in order[: args.test_pairs]]
    train = [pairs[i] for i in order[args.test_pairs :]]
    if args.train_pairs:
        train = train[: args.train_pairs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, out / "train_pairs.jsonl")
    write_jsonl(test, out / "test_pairs.jsonl")
    print(f"pairs: {len(train)} train, {len(test)} held out", file=sys.stderr)

    settings |= {"data": str(out / "train_pairs.jsonl"), "out": str(out / "run"), "overwrite": True}
    command = "preftune rm " + shlex.join(as_flags(settings))
    print(f"equivalent command: {command}", file=sys.stderr)
    config = resolve_config(RMConfig, None, settings)
    train_start = time.perf_counter()
    run = train_reward_model(config, show_progress=sys.stderr.isatty())
    train_wall = time.perf_counter() - train_start

    score_start = time.perf_counter()
    model, tokenizer = load_scalar_model(run / "final")
    model.requires_grad_(False)
    device = torch.device("cpu")
    precision, _ = common.choose_precision(device, config.precision)
    with common.autocast(device, precision):  # score in the precision it trained in
        gaps = pair_gaps(model, tokenizer, test, batch_size=args.score_batch, max_length=config.max_length,
                         max_prompt_length=config.max_prompt_length, source=str(out / "test_pairs.jsonl")).tolist()  # fmt: skip
    score_wall = time.perf_counter() - score_start

    n = len(test)
    model_outcomes = [float(g > 0) for g in gaps]
    accuracy = sum(model_outcomes) / n
    baselines = {"shorter wins": rule_outcomes(test, shorter), "longer wins": rule_outcomes(test, longer)}
    baseline_acc = {name: sum(o) / n for name, o in baselines.items()}
    best_name = max(baseline_acc, key=baseline_acc.get)
    se_model = math.sqrt(accuracy * (1 - accuracy) / n)
    diffs = [m - b for m, b in zip(model_outcomes, baselines[best_name], strict=True)]
    mean_diff = sum(diffs) / n
    se_paired = math.sqrt(sum((d - mean_diff) ** 2 for d in diffs) / (n - 1) / n)
    z_model = (accuracy - baseline_acc[best_name]) / se_model if se_model else math.inf
    z_paired = mean_diff / se_paired if se_paired else math.inf
    bins, ece = calibration(gaps)

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_rows = [m for m in metrics if "loss" in m]
    tokens = train_rows[-1]["num_tokens"] if train_rows else 0
    results = {
        "command": "python " + shlex.join(["bench/reward_model_hh.py", *sys.argv[1:]]),
        "equivalent_rm_command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        "train_pairs": len(train),
        "test_pairs": n,
        "train_wall_s": round(train_wall, 1),
        "train_tokens": tokens,
        "score_wall_s": round(score_wall, 1),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "train_loss_first_last": [train_rows[0]["loss"], train_rows[-1]["loss"]] if train_rows else None,
        "accuracy": accuracy,
        "accuracy_ci95": wilson_interval(accuracy, n),
        "baselines": {name: {"accuracy": acc, "ci95": wilson_interval(acc, n)} for name, acc in baseline_acc.items()},
        "better_baseline": best_name,
        "se_model": se_model,
        "se_paired": se_paired,
        "standard_errors_above_better_baseline": {"model_se": z_model, "paired_se": z_paired},
        "calibration": bins,
        "ece": ece,
        "target_met": accuracy >= 0.62 and min(z_model, z_paired) >= 2.0,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with (out / "test_gaps.jsonl").open("w", encoding="utf-8") as handle:
        for pair, gap in zip(test, gaps, strict=True):
            handle.write(json.dumps({"gap": gap, "chosen_chars": len(pair.chosen.content),
                                     "rejected_chars": len(pair.rejected.content)}) + "\n")  # fmt: skip

    low, high = results["accuracy_ci95"]
    print(f"\n{n} held-out pairs, {len(train)} training pairs; train {train_wall:.0f} s, scoring {score_wall:.0f} s")
    print("| judge | held-out accuracy | 95% CI |\n|---|---|---|")
    print(f"| reward model ({settings['model']}) | **{accuracy:.3f}** | {low:.3f}-{high:.3f} |")
    for name, acc in baseline_acc.items():
        b_low, b_high = wilson_interval(acc, n)
        print(f"| {name} (characters of the final turn) | {acc:.3f} | {b_low:.3f}-{b_high:.3f} |")
    print(f"\nabove '{best_name}': {accuracy - baseline_acc[best_name]:+.3f} = {z_model:.1f} model SEs "
          f"({se_model:.3f}), {z_paired:.1f} paired SEs ({se_paired:.3f})")  # fmt: skip
    print("\n| BT probability (higher-scored is chosen) | pairs | mean predicted | observed | 95% CI |\n|---|---|---|---|---|")
    for row in bins:
        if row["pairs"]:
            print(f"| {row['bin']} | {row['pairs']} | {row['predicted']:.3f} | {row['observed']:.3f} | "
                  f"{row['ci95'][0]:.3f}-{row['ci95'][1]:.3f} |")  # fmt: skip
        else:
            print(f"| {row['bin']} | 0 | - | - | - |")
    print(f"\nexpected calibration error: {ece:.3f}; target (>= 0.62 and >= 2 SE above the better baseline): "
          f"{'met' if results['target_met'] else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()

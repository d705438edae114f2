"""bf16 against fp32 on the demo's pairs: held-out accuracy of the reward model and of DPO, over seeds.

    python bench/precision_outcomes.py [--seeds 3] [--work /tmp/preftune-precision]

Does the automatic precision (bf16 autocast on a CPU with bf16 units) train as well as fp32?
1. The demo's data, made as `preftune demo` makes it: SmolLM2-135M-Instruct samples two answers to
   each of the full demo's 120 training prompts (temperature 1, up to 56 tokens) and the kid judge
   labels each pair, near-ties left out (`preftune.demo.label_by_kid_judge`). The test pairs come
   from the demo's held-out prompts (every fifth): four answers each, every two of them a pair, so
   the test set is larger than two answers would give. Sampled once (seed 0) and cached in --work.
2. For each seed and precision (fp32, and auto: what `--precision auto` picks here, printed),
   `preftune rm` and `preftune dpo` train on the training pairs with the demo's settings (LoRA;
   rm: 1 epoch, lr 2e-4, top 8 layers; dpo: 2 epochs, lr 2e-4, beta 0.05, 10% warmup) and are
   evaluated on the test pairs at the end: rm `eval/accuracy`, dpo `eval/rewards/accuracies`.
   The seed sets the LoRA and head initialisation and the data order; the data stay the same.
3. The table: mean held-out accuracy over seeds with a 95% t-interval per trainer and precision,
   and the paired difference (auto - fp32, same seed) with its interval. Finished runs are cached
   in --work/results.json, so a second call with more seeds only trains the new ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

MAX_NEW_TOKENS = 56  # the full demo's
TEST_SAMPLES = 4  # answers per held-out prompt: 6 pairs each before near-ties are dropped
METRIC = {"rm": "eval/accuracy", "dpo": "eval/rewards/accuracies"}


def make_data(work: Path) -> tuple[Path, Path]:
    """The training and test pair files (cached)."""
    train_file, test_file = work / "train.jsonl", work / "test.jsonl"
    if train_file.exists() and test_file.exists():
        return train_file, test_file
    from preftune.data.schema import user_prompt, write_jsonl
    from preftune.demo import DEMO_MODEL, FULL, demo_prompts, label_by_kid_judge, split_prompts
    from preftune.generate import generate_completions
    from preftune.models.load import load_policy

    train_prompts, test_prompts = split_prompts(demo_prompts(), FULL)
    policy, tokenizer = load_policy(DEMO_MODEL, seed=0)
    sampled = {}
    for name, prompts, n in (("train", train_prompts, 2), ("test", test_prompts, TEST_SAMPLES)):
        out = generate_completions(policy, tokenizer, [user_prompt(p) for p in prompts], n,
                                   max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, seed=0, batch_size=16)  # fmt: skip
        sampled[name] = out.texts
    train_pairs, train_ties = label_by_kid_judge(train_prompts, sampled["train"])
    # Every two answers to a held-out prompt are a candidate pair, labelled by the same rule.
    flat_prompts, flat_candidates = [], []
    for prompt, answers in zip(test_prompts, sampled["test"], strict=True):
        for a, b in itertools.combinations(answers, 2):
            flat_prompts.append(prompt)
            flat_candidates.append([a, b])
    test_pairs, test_ties = label_by_kid_judge(flat_prompts, flat_candidates)
    write_jsonl(train_pairs, train_file)
    write_jsonl(test_pairs, test_file)
    print(f"data: {len(train_pairs)} training pairs ({train_ties} near-ties left out), {len(test_pairs)} test "
          f"pairs from {len(test_prompts)} held-out prompts ({test_ties} left out)", file=sys.stderr, flush=True)  # fmt: skip
    return train_file, test_file


def train(kind: str, precision: str, seed: int, train_file: Path, test_file: Path, work: Path) -> dict:
    """One demo-settings training run; its held-out accuracy, time and the precision it resolved to."""
    from preftune.config import DPOConfig, RMConfig, resolve_config
    from preftune.demo import DEMO_MODEL, FULL
    from preftune.runlog import read_metrics
    from preftune.train.dpo import train_dpo
    from preftune.train.reward import train_reward_model

    common = dict(model=DEMO_MODEL, data=str(train_file), eval_data=str(test_file), lora=True, seed=seed,
                  batch_size=4, max_length=192, max_prompt_length=64, lora_r=16, lora_alpha=32, overwrite=True,
                  precision=precision, out=str(work / "runs" / f"{kind}-{precision}-{seed}"), keep_last=1)  # fmt: skip
    started = time.perf_counter()
    if kind == "rm":
        config = resolve_config(RMConfig, None, common | dict(epochs=FULL.rm_epochs, lr=2e-4,
                                                              lora_top_layers=FULL.rm_top_layers))  # fmt: skip
        out = train_reward_model(config, show_progress=False)
    else:
        config = resolve_config(DPOConfig, None, common | dict(epochs=FULL.dpo_epochs, lr=2e-4, beta=FULL.dpo_beta,
                                                               warmup_ratio=0.1))  # fmt: skip
        out = train_dpo(config, show_progress=False)
    seconds = time.perf_counter() - started
    final = [r for r in read_metrics(out) if METRIC[kind] in r][-1]
    return {"accuracy": final[METRIC[kind]], "seconds": seconds, "resolved": resolved(precision)}


def resolved(precision: str) -> str:
    import torch

    from preftune.precision import choose_precision

    return choose_precision(torch.device("cpu"), precision)[0]


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    from scipy.stats import t

    return mean, t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def table(results: dict, seeds: list[int], auto: str) -> str:
    lines = [f"{'trainer':8} {'precision':12} {'seeds':>5} {'held-out accuracy':>18} {'95% CI':>17} "
             f"{'s/run':>6}  per seed"]  # fmt: skip
    for kind in ("rm", "dpo"):
        by_precision = {}
        for precision in ("fp32", "auto"):
            done = {seed: results[f"{kind}-{precision}-{seed}"] for seed in seeds if f"{kind}-{precision}-{seed}" in results}
            if not done:
                continue
            runs = list(done.values())
            accuracies = [r["accuracy"] for r in runs]
            by_precision[precision] = {seed: r["accuracy"] for seed, r in done.items()}
            mean, half = interval(accuracies)
            label = f"auto={runs[0]['resolved']}" if precision == "auto" else precision
            lines.append(f"{kind:8} {label:12} {len(runs):5} {mean:18.3f} {mean - half:8.3f}-{mean + half:.3f} "
                         f"{statistics.fmean(r['seconds'] for r in runs):6.0f}  {', '.join(f'{a:.3f}' for a in accuracies)}")  # fmt: skip
        both = [s for s in seeds if s in by_precision.get("fp32", {}) and s in by_precision.get("auto", {})]
        if both:
            differences = [by_precision["auto"][s] - by_precision["fp32"][s] for s in both]
            mean, half = interval(differences)
            lines.append(f"{kind:8} {'auto - fp32':12} {len(both):5} {mean:+18.3f} {mean - half:+8.3f} to {mean + half:+.3f}"
                         f"         (paired by seed)")  # fmt: skip
    return f"precision auto here: {auto}\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/preftune-precision")
    parser.add_argument("--trainers", default="rm,dpo")
    args = parser.parse_args()
    import torch

    from preftune.precision import choose_precision

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    auto = "{} ({})".format(*choose_precision(torch.device("cpu"), "auto"))
    print(f"precision auto here: {auto}", file=sys.stderr, flush=True)
    train_file, test_file = make_data(work)
    cache = work / "results.json"
    results = json.loads(cache.read_text()) if cache.exists() else {}
    seeds = list(range(args.seeds))
    for seed, kind, precision in itertools.product(seeds, args.trainers.split(","), ("fp32", "auto")):
        key = f"{kind}-{precision}-{seed}"
        if key in results:
            continue
        print(f"{key} ...", file=sys.stderr, flush=True)
        results[key] = train(kind, precision, seed, train_file, test_file, work)
        print(f"  accuracy {results[key]['accuracy']:.3f} in {results[key]['seconds']:.0f} s", file=sys.stderr, flush=True)
        cache.write_text(json.dumps(results, indent=1))
    print(table(results, seeds, auto))


if __name__ == "__main__":
    main()

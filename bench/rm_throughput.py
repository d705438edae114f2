"""Reward-model throughput: preftune `rm` (`--batching fast`) against TRL 1.16 `RewardTrainer`, in one run.

    .venv/bin/python bench/rm_throughput.py --pairs 64

Same model (SmolLM2-135M-Instruct trunk + a scalar head, fp32 weights, CPU, full fine-tuning), same
pairs in the same order, batch 8 pairs, max length 512, each run in its own subprocess, alternating,
each warmed up with one forward/backward before its timed pass (see `dpo_throughput.py`, also for
`--ours`/`--trl` and how rows of the same precision are compared; auto = preftune's choice here). Timed: one
pass over the pairs (ours: first batch to the end of the last optimizer step; TRL:
`trainer.train()`).

TRL's RewardTrainer drops pairs longer than max_length instead of cutting them, so both sides get
only pairs that fit (the first N whose chosen and rejected sequences are at most 500 tokens).
For a like-for-like step 1, TRL's score layer starts from our head's weights (our bias starts at
0; TRL's layer has none), TRL is given our token ids (pre-tokenized `chosen_ids`/`rejected_ids`:
its own chat-template tokenization keeps the "\n" after <|im_end|>, so it would read each reward
one token later than ours), and TRL gets a pad token distinct from EOS: with SmolLM2's pad == EOS,
transformers' sequence classifier would read the reward one token early, before the closing EOS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dpo_throughput as common_bench  # noqa: E402  (shared data sets, warm-up, peak, wait4)

LEARNING_RATE, SEED, FIT = 1e-5, 0, 500


def write_fitting_datasets(folder: Path, names: list[str], count: int) -> dict[str, Path]:
    """The first `count` pairs of each set whose sequences fit in FIT tokens untruncated."""
    from preftune.data.formats import read_pairs
    from preftune.data.schema import write_jsonl
    from preftune.data.tokenize import PairTokenizer
    from preftune.models.load import load_tokenizer

    pair_tokenizer = PairTokenizer(
        load_tokenizer("smollm2-135m"), max_length=100_000, max_prompt_length=99_999
    )
    files = {}
    for name in names:
        if name == "demo":
            pairs, _ = read_pairs(common_bench.SHARED_DATA / "dpo_en_demo.json")
        else:
            pairs = common_bench.hh_style_pairs(4 * count)
        kept = []
        for pair in pairs:
            tokens = pair_tokenizer(pair)
            if len(tokens.prompt_ids) + max(len(tokens.chosen_ids), len(tokens.rejected_ids)) <= FIT:
                kept.append(pair)
            if len(kept) == count:
                break
        if len(kept) < count:
            raise SystemExit(f"{name}: only {len(kept)} pairs fit in {FIT} tokens, asked for {count}")
        files[name] = folder / f"{name}.jsonl"
        write_jsonl(kept, files[name])
    return files


def worker_ours(args) -> dict:
    import torch

    import preftune.train.reward as reward_module
    from preftune.config import RMConfig, resolve_config
    from preftune.models.load import load_policy
    from preftune.runlog import read_metrics
    from preftune.train import common

    warm, _ = load_policy("smollm2-135m")
    common_bench._warm_up(warm)
    del warm
    work = Path(tempfile.mkdtemp(prefix="bench-rm-ours-"))
    marks = common_bench.mark_first_calls(
        {"start": (reward_module, "collate_pairs"), "end": (common, "save_checkpoint")}
    )
    config = resolve_config(RMConfig, None, dict(
        model="smollm2-135m", data=str(args.data), out=str(work / "run"), batch_size=args.batch_size, epochs=1.0,
        lr=LEARNING_RATE, max_length=args.max_length, max_prompt_length=args.max_length - 1, seed=SEED,
        keep_last=1, batching=args.batching, pack_length=args.pack_length, activation_checkpointing=args.checkpointing,
        precision=args.precision,
    ))  # fmt: skip
    reward_module.train_reward_model(config, show_progress=False)
    rows = [r for r in read_metrics(work / "run") if "loss" in r]
    return {
        "precision": common_bench.resolved(args.precision, "cpu"),
        "seconds": marks["end"] - marks["start"],
        "pairs": len(rows) * args.batch_size,
        "tokens": int(rows[-1]["num_tokens"]),
        "step1_loss": rows[0]["loss"],
        "step1_logps_chosen": rows[0]["mean_reward"],  # the column is "step-1 mean reward" here
        "threads": torch.get_num_threads(),
    }


def worker_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from preftune.data.formats import read_pairs
    from preftune.data.tokenize import PairTokenizer
    from preftune.models.reward_model import from_causal_lm
    from preftune.models.smollm2 import ensure_smollm2
    from preftune.train.common import DataOrder

    folder = ensure_smollm2()
    ours, _ = from_causal_lm("smollm2-135m", seed=SEED)  # only for its freshly initialised head
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        model.score.weight.copy_(ours.head.weight)
    del ours
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = "<|endoftext|>"  # not EOS: see the module docstring
    model.config.pad_token_id = tokenizer.pad_token_id
    _warm_up_classifier(model)
    pairs, _ = read_pairs(args.data)
    order = DataOrder(len(pairs), SEED)._epoch_order(0)
    # The ids `preftune rm` trains on (same limits as worker_ours), so both read the same tokens.
    pair_tokenizer = PairTokenizer(AutoTokenizer.from_pretrained(folder), max_length=args.max_length,
                                   max_prompt_length=args.max_length - 1)  # fmt: skip
    tokens = [pair_tokenizer(pairs[i]) for i in order]
    rows = [{"chosen_ids": t.prompt_ids + t.chosen_ids, "rejected_ids": t.prompt_ids + t.rejected_ids} for t in tokens]
    speed = {"bf16": args.precision == "bf16", "gradient_checkpointing": args.checkpointing != "off"}
    config = trl.RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-rm-trl-"), per_device_train_batch_size=args.batch_size,
        num_train_epochs=1, learning_rate=LEARNING_RATE, max_length=args.max_length, logging_steps=1,
        report_to="none", save_strategy="no", seed=SEED, use_cpu=True, lr_scheduler_type="linear", warmup_steps=0,
        max_grad_norm=1.0, weight_decay=0.0, train_sampling_strategy="sequential", dataloader_num_workers=0, **speed,
    )  # fmt: skip
    trainer = trl.RewardTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logged = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {
        "precision": args.precision,
        "seconds": seconds,
        "pairs": len(trainer.train_dataset),
        "tokens": int(logged[-1]["num_tokens"]),
        "step1_loss": logged[0]["loss"],
        "step1_logps_chosen": logged[0].get("mean_reward", float("nan")),
        "threads": torch.get_num_threads(),
    }


def _warm_up_classifier(model) -> None:
    import torch

    high = min(1000, model.config.vocab_size)  # a small test model has a small vocabulary
    ids = torch.randint(3, high, (2, 64), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids).logits.sum().backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--datasets", default="demo,hh")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--ours",
        default="fast:off:auto,fast:off:fp32",
        help="our variants, BATCHING:CHECKPOINTING[:PRECISION] each",
    )
    parser.add_argument(
        "--trl",
        default="auto,auto:full,fp32",
        help="TRL settings, PRECISION[:CHECKPOINTING] each (off|full); auto:full on a CPU with bf16 units is TRL's defaults",
    )
    parser.add_argument("--pack-length", type=int, default=0)
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--json")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="for variants and TRL settings that name none (auto: preftune's automatic choice here)",
    )
    common_bench.add_worker_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        common_bench._set_threads(args.threads)
        with common_bench.worker_scratch():
            result = worker_ours(args) if args.worker == "ours" else worker_trl(args)
        Path(args.result).write_text(json.dumps(result))
        return

    files = write_fitting_datasets(
        Path(tempfile.mkdtemp(prefix="bench-rm-data-")), args.datasets.split(","), args.pairs
    )
    trunk_parameters = common_bench.smollm2_parameters() - 49152 * 576  # no LM head; the scalar head is ~free
    print(f"precision auto on this machine: {common_bench.describe_auto('cpu')}", file=sys.stderr, flush=True)
    kinds = common_bench.kinds_of(args)
    precisions = sorted({common_bench.resolved(common_bench.variant_of(k, args.precision)[3], "cpu") for k in kinds})
    peaks = {p: [common_bench.matmul_peak_gflops(args.threads, precision=p)] for p in precisions}
    runs = common_bench.measure(files, kinds, args, script=__file__)
    for p in precisions:
        peaks[p].append(common_bench.matmul_peak_gflops(args.threads, precision=p))
    peak = {p: max(rates) for p, rates in peaks.items()}
    title = (f"\nreward model, SmolLM2-135M trunk CPU, batch {args.batch_size}, max length {args.max_length}, "
             f"{args.pairs} pairs per set, {args.rounds} round(s); auto = {common_bench.describe_auto('cpu')}; matmul peak (GFLOP/s, measured at start and end): "
             + "; ".join(f"{p} {peak[p]:.0f} ({', '.join(f'{r:.0f}' for r in rates)})" for p, rates in peaks.items()))  # fmt: skip
    # 6N FLOPs per token: forward and backward of the trunk (no reference model in reward modelling).
    summary = common_bench.report(
        title, files, kinds, runs, peak, trunk_parameters, 6, "step-1 r_mean", args.precision
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Supervised fine-tuning: maximise the likelihood of the response tokens, top to bottom.

    load policy and examples -> tokenize (prompt masked) -> for each optimizer step:
    grad-accumulated micro-batches of token-mean NLL -> clip, step, schedule -> log, eval,
    checkpoint -> final model.

Examples are (prompt, response): plain {"prompt","response"} rows, {"messages"} rows, or the
chosen side of preference pairs (the usual start before DPO: SFT on the preferred answers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import SFTConfig
from ..data.batching import collate_sequences
from ..data.formats import read_sft_examples
from ..data.tokenize import PairTokenizer
from ..models.logprobs import batch_logprobs
from . import common, distributed, loop
from .run_folder import prepare_run_folder
from .setup import load_model_for_training


def train_sft(config: SFTConfig, show_progress: bool | None = None) -> Path:
    distributed.setup(config)  # under torchrun: join the process group (train/distributed.py)
    prepare_run_folder(config)  # one run per folder: refuse a used --out, check --resume
    show_progress = (sys.stderr.isatty() if show_progress is None else show_progress) and distributed.is_main()
    device = common.pick_device(config.device)
    precision, precision_reason = common.choose_precision(device, config.precision)
    common.seed_everything(config.seed)
    out = Path(config.out)
    print(f"sft: device={device} precision={precision} ({precision_reason})", file=sys.stderr)

    # -- model and data ------------------------------------------------------------------------
    policy, tokenizer = load_model_for_training(config, device)
    examples, report = read_sft_examples(config.data, format=config.format)
    print(f"{report.path}: {report.rows_read} rows read, {report.pairs_kept} examples kept, dropped: {report.dropped or 'none'}", file=sys.stderr)
    held_out = read_sft_examples(config.eval_data, format=config.format)[0] if config.eval_data else []
    pair_tokenizer = PairTokenizer(tokenizer, config.max_length, config.max_prompt_length)
    train_rows = [pair_tokenizer.encode_example(p, r)[:2] for p, r in examples]
    eval_rows = [pair_tokenizer.encode_example(p, r)[:2] for p, r in held_out]
    pad_id = tokenizer.pad_token_id
    runner = distributed.wrap_model(policy, config, device, precision)  # DDP / FSDP under torchrun

    def forward(rows, indices):
        batch = collate_sequences([rows[i] for i in indices], pad_id).to(device)
        with common.autocast(device, precision, config.activation_checkpointing):
            logps, counts = runner(batch_logprobs, policy, batch)
        # Token-weighted mean NLL over the micro-batch: every response token counts the same, on
        # every rank too (the share of all ranks' tokens; exactly counts.sum() in one process).
        loss = -logps.sum() / distributed.per_rank_share(counts.sum())
        return loss, {"loss": float(loss.detach()), "num_tokens": batch.num_tokens}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        policy.eval()
        nll, tokens = 0.0, 0.0
        for start in range(0, len(eval_rows), config.batch_size):
            batch = collate_sequences(eval_rows[start : start + config.batch_size], pad_id).to(device)
            logps, counts = runner(batch_logprobs, policy, batch)
            nll, tokens = nll - float(logps.sum()), tokens + float(counts.sum())
        policy.train()
        return {"eval/loss": nll / tokens}

    # -- optimizer, schedule, resume -------------------------------------------------------------
    total_steps = common.total_steps_of(config, len(train_rows))
    optimizer, scheduler, order, log = loop.optimizer_schedule_and_log(config, policy, total_steps, len(train_rows),
                                                                       out)  # fmt: skip
    step, tokens_seen = loop.resume_if_asked(config, out, policy, optimizer, scheduler, order, log)
    checkpoint = loop.checkpoint_saver(config, out, policy, tokenizer, optimizer, scheduler, order,
                                       lambda: {"tokens_seen": tokens_seen})  # fmt: skip

    # -- the loop ------------------------------------------------------------------------------
    policy.train()
    with loop.running(total_steps, step, show_progress, "sft") as (progress, stop):
        while step < total_steps:
            step_metrics = {"loss": 0.0, "num_tokens": 0.0}
            for micro in range(config.grad_accum):
                distributed.sync_gradients(runner, micro == config.grad_accum - 1)
                loss, metrics = forward(train_rows, distributed.shard(order.take(config.batch_size)))
                common.check_finite(loss, step + 1, out)
                (loss / config.grad_accum).backward()
                step_metrics["loss"] += metrics["loss"] / config.grad_accum
                step_metrics["num_tokens"] += metrics["num_tokens"]
            step_metrics = distributed.all_reduce_metrics(step_metrics | distributed.memory_metrics(device))
            tokens_seen += int(step_metrics["num_tokens"])
            step_metrics["num_tokens"] = tokens_seen
            loop.optimizer_step(config, policy, optimizer, scheduler, step_metrics, step + 1, out)
            step += 1
            step_metrics["epoch"] = order.epoch
            # log_eval_steps=False: sft logs on --log-every and the last step only, as it always has.
            loop.finish_step(step, total_steps, step_metrics, config, evaluate=evaluate if eval_rows else None,
                             log=log, progress=progress, progress_fields={"loss": "loss"},
                             checkpoint=checkpoint, stop=stop, label="sft", log_eval_steps=False)  # fmt: skip

    loop.end_of_run(config, step, evaluate=evaluate if eval_rows else None, log=log, checkpoint=checkpoint,
                    model=policy, tokenizer=tokenizer, out=out, train_metrics={},
                    truncation=pair_tokenizer.stats.to_dict())  # fmt: skip
    return out

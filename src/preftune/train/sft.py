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
from ..runlog import RunLog
from . import common, distributed
from .run_folder import prepare_run_folder
from .setup import finish_run, load_model_for_training


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
    optimizer = common.make_optimizer(policy, config.lr, config.weight_decay)
    scheduler = common.make_scheduler(optimizer, config.scheduler, common.warmup_steps_of(config, total_steps), total_steps)
    order = common.DataOrder(len(train_rows), config.seed)
    log = RunLog(out, config, config.report_to, enabled=distributed.is_main())
    step, tokens_seen = 0, 0
    if config.resume:
        step, extra = common.resume_latest(out, policy, optimizer, scheduler, order, log)
        tokens_seen = extra.get("tokens_seen", 0)

    # -- the loop ------------------------------------------------------------------------------
    policy.train()
    progress = common.TrainProgress(total_steps, step, enabled=show_progress, label="sft")
    stop = common.StopRequest()
    with stop.installed():
        try:
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
                step_metrics["grad_norm"] = common.grad_norm_and_clip(policy, config.max_grad_norm)
                common.check_finite_gradients(step_metrics["grad_norm"], step + 1, out)
                step_metrics["learning_rate"] = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                stop.agree()
                step_metrics["epoch"] = order.epoch
                if config.eval_every and eval_rows and step % config.eval_every == 0 and step < total_steps:
                    step_metrics |= evaluate()
                if step % config.log_every == 0 or step == total_steps:
                    log.log(step, step_metrics)
                progress.update(step, {"loss": step_metrics["loss"]})
                if (config.save_every and step % config.save_every == 0) or stop.requested:
                    common.save_checkpoint(out, step, policy, tokenizer, optimizer, scheduler, order, config, config.keep_last, {"tokens_seen": tokens_seen})
                if stop.requested:
                    print(f"\nsft: {stop.requested} received; checkpoint saved at step {step}; resume with --resume", file=sys.stderr)
                    raise SystemExit(143 if stop.requested == "SIGTERM" else 130)
        finally:
            progress.close()

    final_metrics = evaluate() if eval_rows else {}
    if final_metrics:
        log.log(step, final_metrics)
    common.save_checkpoint(out, step, policy, tokenizer, optimizer, scheduler, order, config, config.keep_last, {"tokens_seen": tokens_seen})
    final_model = distributed.unsharded_model(policy)  # FSDP: the gathered weights, on rank 0
    if distributed.is_main():
        finish_run(config, final_model, tokenizer, out, final_metrics, truncation=pair_tokenizer.stats.to_dict())
    log.close()
    return out

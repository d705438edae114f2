"""DPO and its variants: one loop, top to bottom.

    load policy and data -> tokenize -> reference log-probs (precompute | copy | adapter)
    -> for each optimizer step: grad-accumulated micro-batches -> loss from losses/dpo.py
    -> clip, step, schedule -> log, evaluate, checkpoint -> final model.

The math lives elsewhere: the losses in `losses/dpo.py`, log-probs in `models/logprobs.py`,
batching in `data/batching.py`. This file only orders the work.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from ..config import ConfigError, DPOConfig
from ..data.batching import collate_pairs
from ..losses.dpo import DPO_LOSS_OPTIONS, DPO_LOSSES, REFERENCE_FREE_LOSSES, sft_nll
from ..models.logprobs import pair_logprobs
from ..models.reference import (
    LiveReference,
    compute_pair_logprobs,
    load_or_precompute,
    reference_cache_key,
    weights_fingerprint,
)
from . import common, distributed, loop
from .run_folder import prepare_run_folder
from .setup import load_model_for_training, load_pair_splits, tokenize_pairs


def resolve_reference_mode(config: DPOConfig) -> str | None:
    if config.loss not in DPO_LOSSES:
        raise ConfigError("--loss", 0, f"must be one of {', '.join(DPO_LOSSES)}, got {config.loss!r}")
    if config.loss in REFERENCE_FREE_LOSSES:
        if config.ref not in ("auto", "none"):
            raise ConfigError("--ref", 0, f"--loss {config.loss} is reference-free; drop --ref {config.ref}")
        return None
    mode = config.ref if config.ref != "auto" else ("adapter" if config.lora else "precompute")
    if mode not in ("precompute", "copy", "adapter"):
        raise ConfigError("--ref", 0, f"must be precompute, copy or adapter, got {config.ref!r}")
    if mode == "adapter" and not config.lora:
        raise ConfigError("--ref", 0, "adapter needs --lora (the reference is the base with the adapter disabled)")
    return mode


def train_dpo(config: DPOConfig, show_progress: bool | None = None) -> Path:
    """Run DPO as configured; returns the run folder. Raises ValueError on bad settings."""
    distributed.setup(config)  # under torchrun: join the process group (train/distributed.py)
    prepare_run_folder(config)  # one run per folder: refuse a used --out, check --resume
    show_progress = (sys.stderr.isatty() if show_progress is None else show_progress) and distributed.is_main()
    ref_mode = resolve_reference_mode(config)
    device = common.pick_device(config.device)
    precision, precision_reason = common.choose_precision(device, config.precision)
    common.seed_everything(config.seed)
    out = Path(config.out)
    print(f"dpo: loss={config.loss} beta={config.beta} ref={ref_mode or 'none'} device={device} precision={precision} ({precision_reason}) batching={config.batching}", file=sys.stderr)

    # -- model, data, tokens -----------------------------------------------------------------
    policy, tokenizer = load_model_for_training(config, device)
    train_pairs, eval_pairs = load_pair_splits(config)
    train_tokens, eval_tokens, truncation = tokenize_pairs(config, tokenizer, train_pairs, eval_pairs)
    pad_id = tokenizer.pad_token_id
    autocast = lambda: common.autocast(device, precision, config.activation_checkpointing)  # noqa: E731

    # -- reference ----------------------------------------------------------------------------
    def make_reference(tokens, split):
        if ref_mode is None or not tokens:
            return None
        if ref_mode == "copy":
            frozen = copy.deepcopy(policy.get_base_model() if config.lora else policy).eval()
            frozen.requires_grad_(False)
            return LiveReference(frozen, use_disabled_adapter=False, autocast_context=autocast)
        if ref_mode == "adapter":
            return LiveReference(policy, use_disabled_adapter=True, autocast_context=autocast)
        # precompute: the reference is the policy as loaded (its adapter, if any, disabled).
        settings = {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
                    "precision": precision, "split": split, "batching": config.batching}  # fmt: skip
        fingerprint = weights_fingerprint(policy.get_base_model() if config.lora else policy)
        key = reference_cache_key(fingerprint, tokens, settings)

        def compute():
            context = policy.disable_adapter if config.lora else torch.no_grad
            with context():
                return compute_pair_logprobs(policy, tokens, pad_id, config.batch_size, device, autocast,
                                             layout=config.batching, pack_length=config.pack_length)  # fmt: skip

        reference, cached = load_or_precompute(common.reference_cache_dir(), key, compute)
        print(f"dpo: reference log-probs for {len(tokens)} {split} pairs {'from cache' if cached else 'precomputed'} ({key})", file=sys.stderr)
        return reference

    with distributed.main_first():  # rank 0 fills the reference cache, the others then read it
        train_reference = make_reference(train_tokens, "train")
        eval_reference = make_reference(eval_tokens, "eval")
    runner = distributed.wrap_model(policy, config, device, precision)  # DDP / FSDP under torchrun

    loss_fn = DPO_LOSSES[config.loss]
    loss_options = {name: getattr(config, name) for name in DPO_LOSS_OPTIONS[config.loss]}

    def forward(tokens, indices, reference):
        batch = collate_pairs([tokens[i] for i in indices], pad_id, config.batching, config.pack_length).to(device)
        with autocast():
            policy_out = runner(pair_logprobs, policy, batch)
        ref_chosen, ref_rejected = reference(batch, indices) if reference else (None, None)
        losses, metrics = loss_fn(
            policy_out["chosen_logps"], policy_out["rejected_logps"], ref_chosen, ref_rejected,
            beta=config.beta, chosen_lengths=policy_out["chosen_lengths"],
            rejected_lengths=policy_out["rejected_lengths"], **loss_options,
        )  # fmt: skip
        loss = losses.mean()
        if config.sft_weight > 0:
            nll, nll_metrics = sft_nll(policy_out["chosen_logps"], policy_out["chosen_lengths"])
            loss = loss + config.sft_weight * nll
            metrics |= nll_metrics
        metrics = {k: float(v) for k, v in metrics.items()} | {"loss": float(loss.detach()), "num_tokens": batch.sequences.num_tokens}
        return loss, metrics

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        policy.eval()
        totals: dict[str, float] = {}
        for start in range(0, len(eval_tokens), config.batch_size):
            indices = list(range(start, min(start + config.batch_size, len(eval_tokens))))
            _, metrics = forward(eval_tokens, indices, eval_reference)
            for name, value in metrics.items():  # weight by batch size: the mean over all eval pairs
                totals[name] = totals.get(name, 0.0) + value * (len(indices) if name != "num_tokens" else 1)
        policy.train()
        return {f"eval/{k}": (v / len(eval_tokens) if k != "num_tokens" else v) for k, v in totals.items()}

    # -- optimizer, schedule, resume -------------------------------------------------------------
    total_steps = common.total_steps_of(config, len(train_tokens))
    optimizer, scheduler, order, log = loop.optimizer_schedule_and_log(config, policy, total_steps, len(train_tokens),
                                                                       out)  # fmt: skip
    start_step, tokens_seen = loop.resume_if_asked(config, out, policy, optimizer, scheduler, order, log)
    checkpoint = loop.checkpoint_saver(config, out, policy, tokenizer, optimizer, scheduler, order,
                                       lambda: {"tokens_seen": tokens_seen})  # fmt: skip

    # -- the loop ------------------------------------------------------------------------------
    policy.train()
    step = start_step
    last_metrics: dict[str, float] = {}
    with loop.running(total_steps, start_step, show_progress, "dpo") as (progress, stop):
        while step < total_steps:
            step_metrics: dict[str, float] = {}
            for micro in range(config.grad_accum):
                distributed.sync_gradients(runner, micro == config.grad_accum - 1)
                indices = distributed.shard(order.take(config.batch_size))  # this rank's slice
                loss, metrics = forward(train_tokens, indices, train_reference)
                common.check_finite(loss, step + 1, out)
                (loss / config.grad_accum).backward()
                for name, value in metrics.items():  # mean over micro-batches (sum for counts)
                    share = value if name == "num_tokens" else value / config.grad_accum
                    step_metrics[name] = step_metrics.get(name, 0.0) + share
            step_metrics = distributed.all_reduce_metrics(step_metrics | distributed.memory_metrics(device))
            tokens_seen += int(step_metrics["num_tokens"])
            step_metrics["num_tokens"] = tokens_seen  # cumulative, as TRL logs it
            loop.optimizer_step(config, policy, optimizer, scheduler, step_metrics, step + 1, out)
            step += 1
            step_metrics["epoch"] = order.epoch
            last_metrics = step_metrics  # the same dict: an eval at this step joins it
            loop.finish_step(step, total_steps, step_metrics, config, evaluate=evaluate if eval_tokens else None,
                             log=log, progress=progress, progress_fields={"loss": "loss", "acc": "rewards/accuracies"},
                             checkpoint=checkpoint, stop=stop, label="dpo")  # fmt: skip

    loop.end_of_run(config, step, evaluate=evaluate if eval_tokens else None, log=log, checkpoint=checkpoint,
                    model=policy, tokenizer=tokenizer, out=out, train_metrics=last_metrics, truncation=truncation)  # fmt: skip
    return out

"""Reward model training (Bradley-Terry on preference pairs): one loop, top to bottom.

    load trunk + fresh scalar head (LoRA or full) and data -> tokenize
    -> for each optimizer step: grad-accumulated micro-batches -> rewards at the last response
       token -> loss from losses/reward.py -> clip, step, schedule -> log, evaluate, checkpoint
    -> final/ in the layout `models.reward_model.load_scalar_model` reads.

The math lives elsewhere: the loss in `losses/reward.py`, reading rewards in
`models/reward_model.py`, batching in `data/batching.py`. This file only orders the work; its
shape follows `train/dpo.py` on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import ConfigError, RMConfig
from ..data.batching import PairBatch, collate_pairs
from ..data.schema import DataError, PreferencePair
from ..data.tokenize import PairTokenizer, TokenizedPair
from ..losses.reward import bradley_terry
from ..models.checkpointing import enable_activation_checkpointing
from ..models.load import LoraSettings
from ..models.reward_model import ScalarHeadModel, from_causal_lm, reward_of_sequences
from . import common, distributed, loop
from .run_folder import prepare_run_folder
from .setup import load_pair_splits, tokenize_pairs


def pair_rewards(model: ScalarHeadModel, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards [B], rejected rewards [B]) of a `PairBatch` (chosen rows come first)."""
    rewards = reward_of_sequences(model, batch.sequences)
    return rewards[: batch.num_pairs], rewards[batch.num_pairs :]


def _merge_step_metrics(into: dict[str, float], metrics: dict[str, float], micro_batches: int) -> None:
    """Combine one micro-batch's metrics into the step's: extremes stay extremes, token counts
    add up, everything else is the mean over micro-batches."""
    for name, value in metrics.items():
        if name not in into:
            into[name] = (
                value if name in ("min_reward", "max_reward", "num_tokens") else value / micro_batches
            )
        elif name == "min_reward":
            into[name] = min(into[name], value)
        elif name == "max_reward":
            into[name] = max(into[name], value)
        elif name == "num_tokens":
            into[name] += value
        else:
            into[name] += value / micro_batches


def train_reward_model(config: RMConfig, show_progress: bool | None = None) -> Path:
    """Train a reward model as configured; returns the run folder (final model in `final/`)."""
    distributed.setup(config)  # under torchrun: join the process group (train/distributed.py)
    prepare_run_folder(config)  # one run per folder: refuse a used --out, check --resume
    show_progress = (sys.stderr.isatty() if show_progress is None else show_progress) and distributed.is_main()
    device = common.pick_device(config.device)
    precision, precision_reason = common.choose_precision(device, config.precision)
    common.seed_everything(config.seed)
    out = Path(config.out)
    print(f"rm: {'lora' if config.lora else 'full'} device={device} precision={precision} ({precision_reason}) "
          f"margin={'data' if config.use_margin else 'off'} center_coef={config.center_coef} batching={config.batching}", file=sys.stderr)  # fmt: skip

    # -- model, data, tokens -----------------------------------------------------------------
    lora = (
        LoraSettings(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
        if config.lora
        else None
    )
    if config.lora_top_layers and not config.lora:
        raise ConfigError("--lora-top-layers", 0, "needs --lora")
    model, tokenizer = from_causal_lm(
        config.model, lora=lora, device=device, seed=config.seed, lora_top_layers=config.lora_top_layers
    )
    enable_activation_checkpointing(model.backbone, config.activation_checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(
        f"rm: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)",
        file=sys.stderr,
    )
    train_pairs, eval_pairs = load_pair_splits(config)
    train_tokens, eval_tokens, truncation = tokenize_pairs(config, tokenizer, train_pairs, eval_pairs)
    pad_id = tokenizer.pad_token_id
    autocast = lambda: common.autocast(device, precision, config.activation_checkpointing)  # noqa: E731
    runner = distributed.wrap_model(model, config, device, precision)  # DDP / FSDP under torchrun

    def rewards_of(tokens: list[TokenizedPair], indices: list[int]):
        batch = collate_pairs([tokens[i] for i in indices], pad_id, config.batching, config.pack_length).to(device)
        with autocast():
            chosen, rejected = runner(pair_rewards, model, batch)
        # Pairs without a margin get 0 (collate_pairs fills them) so one batch can mix both.
        margins = batch.margins if config.use_margin else None
        return chosen, rejected, margins, batch.sequences.num_tokens

    def forward(tokens, indices):
        chosen, rejected, margins, num_tokens = rewards_of(tokens, indices)
        losses, metrics = bradley_terry(chosen, rejected, margins, center_coef=config.center_coef)
        loss = losses.mean()
        return loss, {k: float(v) for k, v in metrics.items()} | {"num_tokens": num_tokens}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        # All eval rewards first, then one loss call: exact means and true min/max over the set.
        model.eval()
        chosen, rejected, margins = [], [], []
        for start in range(0, len(eval_tokens), config.batch_size):
            indices = list(range(start, min(start + config.batch_size, len(eval_tokens))))
            c, r, m, _ = rewards_of(eval_tokens, indices)
            chosen.append(c.float())
            rejected.append(r.float())
            margins.append(m if m is not None else torch.zeros_like(c))
        model.train()
        any_margin = config.use_margin and any(t.margin is not None for t in eval_tokens)
        _, metrics = bradley_terry(torch.cat(chosen), torch.cat(rejected), torch.cat(margins) if any_margin else None,
                                   center_coef=config.center_coef)  # fmt: skip
        return {f"eval/{k}": float(v) for k, v in metrics.items()}

    # -- optimizer, schedule, resume -------------------------------------------------------------
    total_steps = common.total_steps_of(config, len(train_tokens))
    optimizer, scheduler, order, log = loop.optimizer_schedule_and_log(config, model, total_steps, len(train_tokens),
                                                                       out)  # fmt: skip
    start_step, tokens_seen = loop.resume_if_asked(config, out, model, optimizer, scheduler, order, log)
    checkpoint = loop.checkpoint_saver(config, out, model, tokenizer, optimizer, scheduler, order,
                                       lambda: {"tokens_seen": tokens_seen})  # fmt: skip

    # -- the loop ------------------------------------------------------------------------------
    model.train()
    step = start_step
    last_metrics: dict[str, float] = {}
    with loop.running(total_steps, start_step, show_progress, "rm") as (progress, stop):
        while step < total_steps:
            step_metrics: dict[str, float] = {}
            for micro in range(config.grad_accum):
                distributed.sync_gradients(runner, micro == config.grad_accum - 1)
                indices = distributed.shard(order.take(config.batch_size))  # this rank's slice
                loss, metrics = forward(train_tokens, indices)
                common.check_finite(loss, step + 1, out)
                (loss / config.grad_accum).backward()
                _merge_step_metrics(step_metrics, metrics, config.grad_accum)
            step_metrics = distributed.all_reduce_metrics(step_metrics | distributed.memory_metrics(device))
            tokens_seen += int(step_metrics["num_tokens"])
            step_metrics["num_tokens"] = tokens_seen  # cumulative, as TRL logs it
            loop.optimizer_step(config, model, optimizer, scheduler, step_metrics, step + 1, out)
            step += 1
            step_metrics["epoch"] = order.epoch
            last_metrics = step_metrics  # the same dict: an eval at this step joins it
            loop.finish_step(step, total_steps, step_metrics, config, evaluate=evaluate if eval_tokens else None,
                             log=log, progress=progress, progress_fields={"loss": "loss", "acc": "accuracy"},
                             checkpoint=checkpoint, stop=stop, label="rm")  # fmt: skip

    def announce(final_metrics: dict) -> None:
        print(f"rm: eval accuracy {final_metrics['eval/accuracy']:.4f} on {len(eval_tokens)} pairs "
              f"(mean margin {final_metrics['eval/margin']:.4f})", file=sys.stderr)  # fmt: skip

    loop.end_of_run(config, step, evaluate=evaluate if eval_tokens else None, log=log, checkpoint=checkpoint,
                    model=model, tokenizer=tokenizer, out=out, train_metrics=last_metrics, truncation=truncation,
                    on_final_eval=announce)  # fmt: skip
    return out


@torch.no_grad()
def pair_gaps(
    model: ScalarHeadModel,
    tokenizer,
    pairs: list[PreferencePair],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    source: str = "pairs",
) -> torch.Tensor:
    """r_chosen - r_rejected per pair [N] (fp32, CPU), tokenized by the one path as in training."""
    if not pairs:
        raise DataError(source, 0, "no preference pairs to score")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    tokens = [pair_tokenizer(p) for p in pairs]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gaps = []
    try:
        for start in range(0, len(tokens), batch_size):
            batch = collate_pairs(tokens[start : start + batch_size], tokenizer.pad_token_id).to(device)
            chosen, rejected = pair_rewards(model, batch)
            gaps.append((chosen - rejected).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(gaps)


def score_pairs(
    model: ScalarHeadModel,
    tokenizer,
    pairs: list[PreferencePair],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    source: str = "pairs",
) -> dict[str, float]:
    """`preftune score`: {"pairs": n, "accuracy": fraction with r_c > r_r, "mean_margin": mean r_c - r_r}."""
    gap = pair_gaps(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length,
                    max_prompt_length=max_prompt_length, source=source)  # fmt: skip
    # Strict, like the training metric: a tie is not a correct ranking.
    return {
        "pairs": len(pairs),
        "accuracy": float((gap > 0).float().mean()),
        "mean_margin": float(gap.mean()),
    }

"""KTO: learn from single answers marked good or bad (thumbs). One loop, top to bottom.

    load policy, reference and unpaired data -> tokenize
    -> for each optimizer step: grad-accumulated micro-batches, each:
         KL estimate from mismatched (prompt, other answer) pairs, no gradient (policy and reference)
         -> log-probs of the matched answers (policy with gradient, reference without)
         -> loss from losses/kto.py
    -> clip, step, schedule -> log, evaluate, checkpoint -> final model.

The math lives elsewhere: the loss in `losses/kto.py`, log-probs in `models/logprobs.py`, the
batches and their mismatched pairs in `data/batching.py`. This file only orders the work.

Metrics (TRL's KTOTrainer names): loss, kl, rewards/chosen, rewards/rejected, rewards/margins,
logps/chosen, logps/rejected, grad_norm, learning_rate, num_tokens, epoch; eval versions prefixed
"eval/". Group metrics ("chosen" = desirable) are means over the examples that have them, across
micro-batches and ranks alike.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from ..config import ConfigError, KTOConfig
from ..data.batching import collate_unpaired
from ..data.tokenize import PairTokenizer
from ..data.unpaired import read_unpaired
from ..losses.kto import KTO_LOSSES, NEEDS_KL_ESTIMATE, kto_kl_estimate
from ..models.load import load_policy
from ..models.logprobs import batch_logprobs
from . import common, distributed, loop
from .run_folder import prepare_run_folder
from .setup import load_model_for_training, load_pair_splits

# Group metrics: averaged over the examples of their group (see the module docstring).
GROUP_OF = {"rewards/chosen": True, "logps/chosen": True, "rewards/rejected": False, "logps/rejected": False}


def resolve_reference_mode(config: KTOConfig) -> str:
    if config.ref_model:
        return "model"
    mode = config.ref if config.ref != "auto" else ("adapter" if config.lora else "copy")
    if mode == "adapter" and not config.lora:
        raise ConfigError("--ref", 0, "adapter needs --lora (the reference is the base with the adapter disabled)")
    return mode


class MetricMeans:
    """Means of per-batch metrics: group metrics weighted by their group's size, the others by
    batch size; "num_tokens" summed. Averaged over ranks by sums, so every example counts once."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, float], labels: torch.Tensor) -> None:
        desirable = int(labels.sum())
        # How many examples each metric is a mean over: its group's, or (None) the whole batch's.
        sizes = {True: desirable, False: len(labels) - desirable, None: len(labels)}
        for name, value in metrics.items():
            weight = 1.0 if name == "num_tokens" else float(sizes[GROUP_OF.get(name)])  # a count is summed
            self.sums[name] = self.sums.get(name, 0.0) + value * weight
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def result(self) -> dict[str, float]:
        names = sorted(set(self.sums) | set(GROUP_OF) | {"rewards/margins"})
        # Every rank reduces the same names: a group absent here may be present on another rank.
        table = {f"sum/{n}": self.sums.get(n, 0.0) for n in names} | {f"weight/{n}": self.weights.get(n, 0.0) for n in names}
        table = distributed.all_reduce_metrics(table)  # means over ranks; the ratio is unaffected
        means = {}
        for name in names:
            weight = table[f"weight/{name}"]
            if name == "num_tokens":
                means[name] = int(round(table[f"sum/{name}"] * distributed.world_size()))
            elif weight > 0 and name != "rewards/margins":
                means[name] = table[f"sum/{name}"] / weight
        if "rewards/chosen" in means and "rewards/rejected" in means:  # as TRL: the difference of the means
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        return means


def train_kto(config: KTOConfig, show_progress: bool | None = None) -> Path:
    """Run KTO as configured; returns the run folder. Raises ValueError on bad settings."""
    distributed.setup(config)  # under torchrun: join the process group (train/distributed.py)
    prepare_run_folder(config)  # one run per folder: refuse a used --out, check --resume
    show_progress = (sys.stderr.isatty() if show_progress is None else show_progress) and distributed.is_main()
    ref_mode = resolve_reference_mode(config)
    device = common.pick_device(config.device)
    precision, precision_reason = common.choose_precision(device, config.precision)
    common.seed_everything(config.seed)
    out = Path(config.out)
    print(f"kto: loss={config.loss} beta={config.beta} desirable_weight={config.desirable_weight} undesirable_weight={config.undesirable_weight} ref={ref_mode} device={device} precision={precision} ({precision_reason}) batching={config.batching}", file=sys.stderr)

    # -- model, data, tokens -----------------------------------------------------------------
    policy, tokenizer = load_model_for_training(config, device)
    train_examples, eval_examples = load_pair_splits(config, reader=read_unpaired, group_key=lambda e: tuple(e.prompt))
    if config.max_prompt_length >= config.max_length:
        raise ConfigError("--max-prompt-length", 0, f"{config.max_prompt_length} must be below --max-length {config.max_length}")
    example_tokenizer = PairTokenizer(tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length)
    train_tokens = [example_tokenizer.tokenize_unpaired(e) for e in train_examples]
    eval_tokens = [example_tokenizer.tokenize_unpaired(e) for e in eval_examples]
    truncation = example_tokenizer.stats.to_dict()
    if truncation["prompts_truncated"] or truncation["responses_truncated"]:
        print(f"truncation (max_length={config.max_length}, max_prompt_length={config.max_prompt_length}): "
              f"{truncation['prompts_truncated']} prompts, {truncation['responses_truncated']} answers of "
              f"{len(train_tokens) + len(eval_tokens)}", file=sys.stderr)  # fmt: skip
    desirable = sum(t.label for t in train_tokens)
    print(f"kto: {len(train_tokens)} training examples ({desirable} desirable, {len(train_tokens) - desirable} undesirable), {len(eval_tokens)} held out", file=sys.stderr)
    if desirable in (0, len(train_tokens)):
        print("kto: warning: every training example has the same label; KTO then only moves answers away from (or towards) the reference point", file=sys.stderr)
    if eval_tokens and len(eval_tokens) < 2:
        raise ConfigError("--eval-data", 0, "KTO's eval needs at least 2 held-out examples (the KL estimate pairs each with another)")
    if config.batch_size // distributed.world_size() < 2:
        raise ConfigError("--batch-size", 0, f"{config.batch_size} over {distributed.world_size()} processes leaves fewer than 2 examples per process; KTO's KL estimate needs 2")
    pad_id = tokenizer.pad_token_id
    autocast = lambda: common.autocast(device, precision)  # noqa: E731

    # -- reference ----------------------------------------------------------------------------
    if ref_mode == "model":
        reference, ref_tokenizer = load_policy(config.ref_model, device=device, seed=config.seed)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError("--ref-model", 0, f"{config.ref_model} has a different tokenizer from --model {config.model}")
    elif ref_mode == "copy":
        reference = copy.deepcopy(policy.get_base_model() if config.lora else policy)
    else:
        reference = None  # adapter: the policy with its adapter switched off
    if reference is not None:
        reference.eval().requires_grad_(False)
    runner = distributed.wrap_model(policy, config, device, precision)  # DDP / FSDP under torchrun

    @torch.no_grad()
    def reference_logps(sequences) -> torch.Tensor:
        with autocast():
            if reference is None:
                with policy.disable_adapter():
                    return batch_logprobs(policy, sequences)[0]
            return batch_logprobs(reference, sequences)[0]

    def forward(tokens, indices):
        batch = collate_unpaired([tokens[i] for i in indices], pad_id, config.max_length, config.batching, config.pack_length).to(device)
        # z0: the KL estimate on mismatched pairs, without gradient (as TRL), averaged over ranks
        # before losses/kto.py clamps it, so every rank uses the same reference point.
        # (apo_zero_unpaired has no reference point: no KL forwards.)
        kl_estimate = torch.zeros((), device=device)
        if config.loss in NEEDS_KL_ESTIMATE:
            with torch.no_grad(), autocast():
                policy_kl = runner(batch_logprobs, policy, batch.kl_sequences)[0]
            kl_estimate = kto_kl_estimate(policy_kl.float(), reference_logps(batch.kl_sequences).float())
            kl_estimate = torch.tensor(distributed.mean_over_ranks(float(kl_estimate)), device=device)
        with autocast():
            policy_logps = runner(batch_logprobs, policy, batch.sequences)[0]
        losses, metrics = KTO_LOSSES[config.loss](
            policy_logps.float(), reference_logps(batch.sequences).float(), batch.labels, kl_estimate,
            beta=config.beta, desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight,
        )  # fmt: skip
        loss = losses.mean()  # over all B examples, weights not renormalised (TRL: losses.nanmean())
        metrics = {k: float(v) for k, v in metrics.items() if k != "rewards/margins"}
        return loss, metrics | {"loss": float(loss.detach()), "num_tokens": batch.sequences.num_tokens}, batch.labels

    def eval_batches(count: int) -> list[list[int]]:
        # Batches of --batch-size; a last batch of one joins the one before (it has no mismatched pair).
        starts = list(range(0, count, config.batch_size))
        if count - starts[-1] == 1 and len(starts) > 1:
            starts.pop()
        return [list(range(s, starts[i + 1] if i + 1 < len(starts) else count)) for i, s in enumerate(starts)]

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        policy.eval()
        means = MetricMeans()
        for indices in eval_batches(len(eval_tokens)):
            _, metrics, labels = forward(eval_tokens, indices)
            means.add(metrics, labels)
        policy.train()
        return {f"eval/{k}": v for k, v in means.result().items()}

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
    with loop.running(total_steps, start_step, show_progress, "kto") as (progress, stop):
        while step < total_steps:
            means = MetricMeans()
            for micro in range(config.grad_accum):
                distributed.sync_gradients(runner, micro == config.grad_accum - 1)
                # Dataset order within the batch: the mismatched pairs then depend only on which
                # examples were drawn (TRL's pairing when it reads the data in order).
                indices = sorted(distributed.shard(order.take(config.batch_size)))  # this rank's slice
                loss, metrics, labels = forward(train_tokens, indices)
                common.check_finite(loss, step + 1, out)
                (loss / config.grad_accum).backward()
                means.add(metrics, labels)
            step_metrics = means.result() | distributed.all_reduce_metrics(distributed.memory_metrics(device))
            tokens_seen += int(step_metrics["num_tokens"])
            step_metrics["num_tokens"] = tokens_seen  # cumulative, as TRL logs it
            loop.optimizer_step(config, policy, optimizer, scheduler, step_metrics, step + 1, out)
            step += 1
            step_metrics["epoch"] = order.epoch
            last_metrics = step_metrics  # the same dict: an eval at this step joins it
            loop.finish_step(step, total_steps, step_metrics, config, evaluate=evaluate if eval_tokens else None,
                             log=log, progress=progress, progress_fields={"loss": "loss", "kl": "kl"},
                             checkpoint=checkpoint, stop=stop, label="kto")  # fmt: skip

    loop.end_of_run(config, step, evaluate=evaluate if eval_tokens else None, log=log, checkpoint=checkpoint,
                    model=policy, tokenizer=tokenizer, out=out, train_metrics=last_metrics, truncation=truncation)  # fmt: skip
    return out

"""PPO-RLHF under a KL penalty (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022): one loop.

    load policy, reference, value model, reward -> for each iteration:
      1. rollout: sample one completion per prompt (KV cache, temperature 1 by default)
      2. score: reward model or judge, minus a penalty for a missing EOS, clip / whiten if asked
      3. per-token rewards: -kl_coef * KL(policy || reference) per token, the score at the last
      4. advantages: GAE, whitened
      5. update: PPO epochs over minibatches, clipped policy + value losses, early stop on approx-KL
      -> adaptive KL coefficient, log, evaluate on held-out prompts, checkpoint -> final model.

The math lives elsewhere: `losses/kl.py`, `losses/advantages.py`, `losses/ppo.py`; the rollout
layout and sampling in `train/rollout.py`. This file only orders the work.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ..config import ConfigError, PPOConfig
from ..data.formats import read_prompts
from ..data.schema import DataError, Message
from ..losses.advantages import gae
from ..losses.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_penalized_rewards
from ..losses.ppo import clipped_policy_loss, clipped_value_loss
from ..rollout import RolloutEngine
from . import common, distributed, loop
from .rollout import (
    RolloutBatch,
    model_logprobs,
    prompt_text_of,
    reference_logprobs,
    response_logits_and_hidden,
    response_logprobs,
    sample,
    score_responses,
    shape_scores,
    warn_if_truncated_sampling,
)
from .run_folder import prepare_run_folder
from .setup import load_model_for_training

# Seeds derived from --seed: a rollout's sampling and an iteration's minibatch order depend only on
# (seed, iteration), so a resumed run draws exactly what the uninterrupted one would have.
_ITERATION_STRIDE = 1_000_003
_EVAL_SEED_OFFSET = 7_919
_RANK_SEED_OFFSET = 104_729  # under torchrun each rank samples with its own noise


def load_prompt_splits(config: PPOConfig) -> tuple[list[list[Message]], list[list[Message]]]:
    """Training prompts and held-out prompts (from --eval-data, or a seeded --eval-split of --prompts)."""
    prompts = read_prompts(config.prompts)
    if config.eval_data:
        return prompts, read_prompts(config.eval_data)
    if config.eval_split <= 0:
        return prompts, []
    count = int(round(config.eval_split * len(prompts)))
    if count < 1 or count >= len(prompts):
        raise DataError(
            config.prompts,
            0,
            f"--eval-split {config.eval_split} leaves no prompts on one side of {len(prompts)}",
        )
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return [prompts[i] for i in order[count:]], [prompts[i] for i in order[:count]]


def load_reward(config: PPOConfig, device: torch.device):
    from ..judges.registry import get_judge

    return get_judge(config.reward, device=str(device), batch_size=config.rollout_batch)


class ValueFunction(torch.nn.Module):
    """V(s_t) for every response token: a separate scalar-head model, or a head on the policy trunk."""

    def __init__(self, separate: torch.nn.Module | None, shared_head: torch.nn.Linear | None):
        super().__init__()
        self.separate, self.shared_head = separate, shared_head

    def forward(self, batch: RolloutBatch, policy_hidden: torch.Tensor | None) -> torch.Tensor:
        if self.shared_head is not None:
            return self.shared_head(policy_hidden).squeeze(-1).float()
        values = self.separate(batch.input_ids, batch.attention_mask, batch.position_ids)
        return values[:, batch.context_length - 1 : -1]  # the state before each action


def make_value_function(config: PPOConfig, policy, tokenizer, device: torch.device) -> ValueFunction:
    if config.value == "shared":
        # Zero-initialised: V = 0 everywhere at the start (no guess about the reward's scale); the
        # gradient still reaches the weights through the trunk's hidden states.
        head = torch.nn.Linear(policy.config.hidden_size, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return ValueFunction(None, head.to(device))
    from ..models.load import LoraSettings
    from ..models.reward_model import from_causal_lm

    # InstructGPT initialises the value model from the reward model; without one, from the policy.
    source = config.reward.removeprefix("rm:") if config.reward.startswith("rm:") else config.model
    lora = (
        LoraSettings(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
        if config.lora
        else None
    )
    model, value_tokenizer = from_causal_lm(source, lora=lora, device=device, seed=config.seed)
    if value_tokenizer.get_vocab() != tokenizer.get_vocab():  # it reads the policy's token ids
        raise ConfigError(
            "--value", 0, f"{source} uses a different tokenizer than the policy; use --value shared"
        )
    print(f"ppo: value model from {source}{' (LoRA)' if lora else ''}", file=sys.stderr)
    return ValueFunction(model.eval(), None)


def value_state(value_fn: ValueFunction) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in value_fn.named_parameters() if p.requires_grad}


def train_ppo(
    config: PPOConfig,
    reward_fn: Callable[[str, str], float] | None = None,
    show_progress: bool | None = None,
    gold=None,
) -> Path:
    """Run PPO as configured; returns the run folder. `reward_fn(prompt, response)` replaces --reward.

    `gold` (a registry `Judge` or a `(prompt, response)` callable) is a held-out judge that also
    scores every rollout, logged as `objective/gold_scores`; it never enters the reward. A proxy
    score rising while the gold one stalls is over-optimisation (`preftune demo --ppo` shows it).
    """
    distributed.setup(config)  # under torchrun: join the process group (train/distributed.py)
    prepare_run_folder(config)  # one run per folder: refuse a used --out, check --resume
    show_progress = (sys.stderr.isatty() if show_progress is None else show_progress) and distributed.is_main()
    warn_if_truncated_sampling(config.top_k, config.top_p)
    device = common.pick_device(config.device)
    precision, precision_reason = common.choose_precision(device, config.precision)
    common.seed_everything(config.seed)
    out = Path(config.out)
    control = (
        f"target_kl={config.target_kl} (init {config.kl_coef})"
        if config.target_kl > 0
        else f"kl_coef={config.kl_coef}"
    )
    print(f"ppo: reward={config.reward if reward_fn is None else 'python callable'} {control} estimator={config.kl_estimator} "
          f"value={config.value} device={device} precision={precision} ({precision_reason})", file=sys.stderr)  # fmt: skip
    autocast = lambda: common.autocast(device, precision, config.activation_checkpointing)  # noqa: E731

    # -- prompts, reward, models --------------------------------------------------------------
    train_prompts, eval_prompts = load_prompt_splits(config)
    print(f"ppo: {len(train_prompts)} training prompts, {len(eval_prompts)} held out", file=sys.stderr)
    reward = reward_fn if reward_fn is not None else load_reward(config, device)
    policy, tokenizer = load_model_for_training(config, device)
    policy.eval()  # dropout off throughout: before the first update the PPO ratio must be exactly 1
    # The KL anchor: the adapter-disabled base with LoRA (no second copy), else a frozen copy.
    reference = None if config.lora else copy.deepcopy(policy).requires_grad_(False)
    value_fn = make_value_function(config, policy, tokenizer, device)
    shared = config.value == "shared"
    kl_control = (AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                  if config.target_kl > 0 else FixedKLController(config.kl_coef))  # fmt: skip

    def policy_and_values(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a_t|s_t) and V(s_t), both [B, T]."""
        with autocast():
            logits, hidden = response_logits_and_hidden(policy, batch, config.temperature, need_hidden=shared)
            values = value_fn(batch, hidden)
        return response_logprobs(logits, batch), values.float()

    @torch.no_grad()
    def in_chunks(fn, batch: RolloutBatch) -> list[torch.Tensor]:
        """`fn` over micro-batches of --batch-size rows, outputs concatenated along rows."""
        parts = [
            fn(batch.rows(slice(i, i + config.batch_size)))
            for i in range(0, len(batch.input_ids), config.batch_size)
        ]
        return (
            [torch.cat(column) for column in zip(*parts, strict=True)]
            if isinstance(parts[0], tuple)
            else [torch.cat(parts)]
        )

    # -- rollout engines: the policy's is refreshed with the new weights before each rollout --------
    def make_engine(model) -> RolloutEngine:
        return RolloutEngine(model, tokenizer, backend=config.rollout_engine, precision=config.rollout_precision,
                             batch_size=config.rollout_batch)  # fmt: skip

    policy_engine = make_engine(policy)
    print(f"ppo: {policy_engine.describe()}", file=sys.stderr)
    engines: dict[str, RolloutEngine] = {}

    def reference_weights():
        """The reference's weights are active inside this: a frozen copy, or the adapter-off policy."""
        return policy.disable_adapter() if reference is None else contextlib.nullcontext()

    def sample_from(model_is_reference: bool, prompts, seed: int):
        settings = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
                        top_p=config.top_p, seed=seed, max_prompt_length=config.max_prompt_length,
                        batch_size=config.rollout_batch)  # fmt: skip
        if not model_is_reference:
            policy_engine.load_weights(policy)
            return sample(policy, tokenizer, prompts, engine=policy_engine, **settings)
        model = reference if reference is not None else policy
        with reference_weights():
            if "reference" not in engines:
                engines["reference"] = make_engine(model)
            return sample(model, tokenizer, prompts, engine=engines["reference"], **settings)

    # -- evaluation on held-out prompts: policy and reference side by side -------------------
    reference_eval: dict = {}

    @torch.no_grad()
    def evaluate(step: int) -> dict[str, float]:
        seed = config.seed + _EVAL_SEED_OFFSET  # the same draws at every eval: curves compare like with like
        if not reference_eval:  # the reference never changes: sample and score it once
            ref = sample_from(True, eval_prompts, seed)
            reference_eval.update(texts=ref.texts, scores=score_responses(reward, eval_prompts, ref.texts))
        pol = sample_from(False, eval_prompts, seed)
        scores = score_responses(reward, eval_prompts, pol.texts)
        batch = pol.batch.to(device)
        policy_lp = in_chunks(lambda b: model_logprobs(policy, b, config.temperature, autocast), batch)[0]
        ref_lp = in_chunks(
            lambda b: reference_logprobs(policy, reference, b, config.temperature, autocast), batch
        )[0]
        kl = torch.where(batch.response_mask, kl_k1(policy_lp, ref_lp), 0.0).sum(-1)
        log.log_samples(step, [
            {"prompt": prompt_text_of(p), "policy": text, "reference": ref_text, "policy_score": s, "reference_score": rs}
            for p, text, ref_text, s, rs in zip(eval_prompts, pol.texts, reference_eval["texts"], scores, reference_eval["scores"], strict=True)
        ])  # fmt: skip
        return {
            "eval/scores": sum(scores) / len(scores),
            "eval/ref_scores": sum(reference_eval["scores"]) / len(scores),
            "eval/kl": float(kl.mean()),
            "eval/mean_length": float(batch.response_mask.sum(-1).float().mean()),
        }

    # -- optimizer, schedule, resume (schedule and checkpoints count iterations) -----------------
    trainable = torch.nn.ModuleDict({"policy": policy, "value": value_fn})
    runner = distributed.wrap_model(trainable, config, device, precision)  # DDP under torchrun
    optimizer, scheduler, order, log = loop.optimizer_schedule_and_log(config, trainable, config.iterations,
                                                                       len(train_prompts), out)  # fmt: skip
    start_step = 0
    if config.resume:
        start_step, extra = common.resume_latest(out, policy, optimizer, scheduler, order, log)
        kl_control.value = extra["kl_coef"]
        params = dict(value_fn.named_parameters())
        with torch.no_grad():
            for name, tensor in extra["value_state"].items():
                params[name].copy_(tensor.to(params[name].device))

    checkpoint = loop.checkpoint_saver(config, out, policy, tokenizer, optimizer, scheduler, order,
                                       lambda: {"kl_coef": kl_control.value, "value_state": value_state(value_fn)})  # fmt: skip

    if eval_prompts and start_step == 0:
        log.log(0, evaluate(0))

    # -- the loop ------------------------------------------------------------------------------
    step = start_step
    metrics: dict[str, float] = {}
    with loop.running(config.iterations, start_step, show_progress, "ppo") as (progress, stop):
        while step < config.iterations:
            iteration = step + 1
            iteration_started = time.perf_counter()
            # 1. rollout (under torchrun: this rank's slice of the prompts, its own samples)
            prompts = [train_prompts[i] for i in distributed.shard(order.take(config.rollout_batch))]
            seed = config.seed * _ITERATION_STRIDE + iteration + distributed.rank() * _RANK_SEED_OFFSET
            rollout = sample_from(False, prompts, seed)
            batch, mask = rollout.batch.to(device), rollout.batch.response_mask.to(device)
            # 2. score
            raw_scores = torch.tensor(score_responses(reward, prompts, rollout.texts), dtype=torch.float32)
            scores = shape_scores(raw_scores, rollout.ended, config.missing_eos_penalty, config.score_clip,
                                  config.normalize_scores).to(device)  # fmt: skip
            with torch.no_grad():
                old_logprobs, old_values = in_chunks(policy_and_values, batch)
                ref_logprobs = in_chunks(
                    lambda b: reference_logprobs(policy, reference, b, config.temperature, autocast),
                    batch,
                )[0]
                # 3. per-token KL-penalised rewards, 4. GAE and whitened advantages
                kl_coef = kl_control.value
                rewards, objective = kl_penalized_rewards(
                    scores, old_logprobs, ref_logprobs, mask, kl_coef, config.kl_estimator
                )
                # All ranks' KL drives the controller, so kl_coef stays the same everywhere.
                objective = distributed.all_reduce_metrics({k: float(v) for k, v in objective.items()})
                advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
                advantages = distributed.masked_whiten(advantages, mask)  # over all ranks' tokens
            # 5. PPO epochs over shuffled minibatches
            update_started = time.perf_counter()
            update = ppo_update(config, optimizer, trainable, lambda b: runner(policy_and_values, b), batch, mask,
                                old_logprobs, old_values, advantages, returns, iteration, out)  # fmt: skip
            kl_control.update(float(objective["objective/kl"]), config.rollout_batch)
            lengths = mask.sum(-1).float()
            metrics = {k: float(v) for k, v in objective.items()} | update | {
                # The raw score (before penalty, clip and whitening) is what users read as "score".
                "objective/scores": float(raw_scores.mean()),
                "objective/entropy": float(torch.where(mask, -old_logprobs, 0.0).sum(-1).mean()),
                "kl_coef": kl_coef,
                "completions/mean_length": float(lengths.mean()),
                "completions/eos_fraction": float(rollout.ended.float().mean()),
                "learning_rate": scheduler.get_last_lr()[0],
                "time/rollout": rollout.seconds,
                "time/update": time.perf_counter() - update_started,
                "time/iteration": time.perf_counter() - iteration_started,  # rollout, scoring, update
            }  # fmt: skip
            # The engine samples with its own forward (bf16 where the CPU has bf16 units); the
            # ratio uses the trainer's. How far apart they are is the off-policy gap that
            # truncated importance sampling corrects where engine log-probs are used (Yao et al. 2025).
            gap = (rollout.engine_logprobs.to(device) - old_logprobs).abs()
            metrics["rollout/logprob_mismatch"] = float(gap[mask].mean())
            metrics["rollout/logprob_mismatch_max"] = float(gap[mask].max())
            if config.normalize_scores or config.score_clip > 0 or config.missing_eos_penalty:
                metrics["objective/shaped_scores"] = float(objective["objective/scores"])
            if gold is not None:
                gold_scores = score_responses(gold, prompts, rollout.texts)
                metrics["objective/gold_scores"] = sum(gold_scores) / len(gold_scores)
            metrics = distributed.all_reduce_metrics(metrics | distributed.memory_metrics(device))
            scheduler.step()
            step = iteration
            loop.finish_step(step, config.iterations, metrics, config,
                             evaluate=partial(evaluate, step) if eval_prompts else None, log=log, progress=progress,
                             progress_fields={"score": "objective/scores", "kl": "objective/kl"},
                             checkpoint=checkpoint, stop=stop,
                             label="ppo", unit="iteration")  # fmt: skip

    loop.end_of_run(config, step, evaluate=partial(evaluate, step) if eval_prompts else None, log=log,
                    checkpoint=checkpoint, model=policy, tokenizer=tokenizer, out=out, train_metrics=metrics,
                    gather_weights=False)  # fmt: skip
    return out


def ppo_update(config, optimizer, trainable, policy_and_values, batch, mask, old_logprobs, old_values,
               advantages, returns, iteration: int, out: Path) -> dict[str, float]:  # fmt: skip
    """--ppo-epochs passes over the rollout in shuffled minibatches; metrics averaged over updates.

    Stops early (all remaining epochs) once a minibatch's approx-KL to the rollout policy passes
    --max-approx-kl: the clipped objective is a trust region only while the policy stays close.
    """
    generator = torch.Generator().manual_seed(config.seed * _ITERATION_STRIDE + iteration)
    # Under torchrun the sizes are global: each rank updates on its share of every minibatch.
    micro_batch = config.batch_size // distributed.world_size()
    rows, minibatch = len(batch.input_ids), micro_batch * config.grad_accum
    totals: dict[str, float] = {}
    updates = 0
    for _ in range(config.ppo_epochs):
        permutation = torch.randperm(rows, generator=generator).to(mask.device)
        for start in range(0, rows, minibatch):
            step_metrics: dict[str, float] = {}
            for micro in range(start, start + minibatch, micro_batch):
                index = permutation[micro : micro + micro_batch]
                new_logprobs, new_values = policy_and_values(batch.rows(index))
                policy_loss, policy_metrics = clipped_policy_loss(
                    new_logprobs, old_logprobs[index], advantages[index], mask[index], config.clip_range
                )
                value_loss, value_metrics = clipped_value_loss(
                    new_values, old_values[index], returns[index], mask[index], config.clip_range_value)  # fmt: skip
                loss = policy_loss + config.vf_coef * value_loss
                common.check_finite(loss, iteration, out)
                (loss / config.grad_accum).backward()
                for name, value in (policy_metrics | value_metrics).items():
                    step_metrics[name] = step_metrics.get(name, 0.0) + float(value) / config.grad_accum
            step_metrics["grad_norm"] = common.grad_norm_and_clip(trainable, config.max_grad_norm)
            common.check_finite_gradients(step_metrics["grad_norm"], iteration, out)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
            for name, value in step_metrics.items():
                totals[name] = totals.get(name, 0.0) + value
            # The same decision on every rank (they must take the same number of optimizer steps).
            if config.max_approx_kl > 0 and distributed.mean_over_ranks(step_metrics["policy/approxkl_avg"]) > config.max_approx_kl:
                return {k: v / updates for k, v in totals.items()} | {
                    "policy/updates": updates,
                    "policy/early_stopped": 1,
                }
    return {k: v / updates for k, v in totals.items()} | {
        "policy/updates": updates,
        "policy/early_stopped": 0,
    }

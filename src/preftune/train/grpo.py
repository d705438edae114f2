"""Online RL with a group baseline, no value model: GRPO, Dr. GRPO, RLOO, REINFORCE++. One loop.

    load policy, reference, reward -> for each iteration:
      1. rollout: sample G completions for each of P prompts (a group per prompt)
      2. score: the reward (verifiable checks, judges, a reward model, the user's python), summed
      3. KL: in the reward (score - kl_coef * KL, RLOO / REINFORCE++) or later in the loss (GRPO)
      4. advantages: group mean (/ std for GRPO), leave-one-out mean, or batch-whitened returns
      5. update: --ppo-epochs over minibatches, the clipped surrogate, normalised per --loss
      -> log, evaluate on held-out prompts, checkpoint -> final model.

The math lives in `losses/advantages.py` (baselines), `losses/grpo.py` (the loss and its
normalisations) and `losses/kl.py`; the rollout layout and sampling in `train/rollout.py`.
Resume, signals, NaN guards, torchrun and the run folder are PPO's (`train/ppo.py`, `common`).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ..config import GRPOConfig
from ..losses.advantages import group_advantages, group_std, reinforce_pp_advantages, rloo_advantages
from ..losses.grpo import group_policy_loss, token_entropy
from ..losses.kl import KL_ESTIMATORS, kl_k1, kl_penalized_rewards
from . import common, distributed, loop
from .online import PolicyAndReference, held_out_evaluation
from .ppo import load_prompt_splits
from .rollout import (
    RolloutBatch,
    response_logits_and_hidden,
    response_logprobs,
    score_responses,
    shape_scores,
    warn_if_truncated_sampling,
)
from .run_folder import prepare_run_folder
from .setup import load_model_for_training

# Seeds derived from --seed, as in train/ppo.py: a resumed run draws what the uninterrupted one would.
_ITERATION_STRIDE = 1_000_003
_EVAL_SEED_OFFSET = 7_919
_RANK_SEED_OFFSET = 104_729
# How each --loss reduces per-token losses (losses/grpo.py) and whether its group baseline divides by the std.
NORMALIZATION = {"grpo": "sequence", "dr_grpo": "constant"}
SCALE_BY_STD = {"grpo": True, "dr_grpo": False}


def load_rewards(spec: str, device: torch.device, batch_size: int, reward_fn=None) -> list[tuple[str, Callable]]:
    """(name, scorer) for each summed part of --reward `spec` (or the one `reward_fn` given in code)."""
    if reward_fn is not None:
        return [("reward", reward_fn)]
    from ..judges.registry import get_judge

    judge = get_judge(spec, device=str(device), batch_size=batch_size)
    return [(part.name, part) for part in (judge.parts or (judge,))]


def score_parts(rewards, prompts, texts) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """The summed score of each completion [B] and each part's scores by name."""
    columns = {name: score_responses(scorer, prompts, texts) for name, scorer in rewards}
    total = torch.tensor([sum(row) for row in zip(*columns.values(), strict=True)], dtype=torch.float32)
    return total, columns


def train_grpo(config: GRPOConfig, reward_fn: Callable[[str, str], float] | None = None,
               show_progress: bool | None = None) -> Path:  # fmt: skip
    """Run the configured group-baseline RL; returns the run folder. `reward_fn(prompt, response)`
    replaces --reward (tests, notebooks)."""
    distributed.setup(config)
    prepare_run_folder(config)
    show_progress = (sys.stderr.isatty() if show_progress is None else show_progress) and distributed.is_main()
    warn_if_truncated_sampling(config.top_k, config.top_p)
    device = common.pick_device(config.device)
    precision, precision_reason = common.choose_precision(device, config.precision)
    common.seed_everything(config.seed)
    out = Path(config.out)
    group, kl_in_loss = config.num_generations, config.kl_placement == "loss" and config.kl_coef > 0
    print(f"grpo: loss={config.loss} advantage={config.advantage} G={group} kl_coef={config.kl_coef} in the "
          f"{config.kl_placement} ({config.kl_estimator}) reward={config.reward if reward_fn is None else 'python callable'} "
          f"device={device} precision={precision} ({precision_reason})", file=sys.stderr)  # fmt: skip
    autocast = lambda: common.autocast(device, precision)  # noqa: E731

    # -- prompts, reward, models ---------------------------------------------------------------
    train_prompts, eval_prompts = load_prompt_splits(config)
    print(f"grpo: {len(train_prompts)} training prompts, {len(eval_prompts)} held out", file=sys.stderr)
    rewards = load_rewards(config.reward, device, config.rollout_size, reward_fn)
    policy, tokenizer = load_model_for_training(config, device)
    policy.eval()  # dropout off: on the first epoch the ratio must be exactly 1
    # The KL anchor: the adapter-disabled base with LoRA (no second copy), else a frozen copy.
    reference = None if config.lora else copy.deepcopy(policy).requires_grad_(False)

    def policy_forward(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a_t|s_t) [B, T] with gradient, and the entropy of each position's distribution [B, T]."""
        with autocast():
            logits, _ = response_logits_and_hidden(policy, batch, config.temperature)
        with torch.no_grad():
            entropy = token_entropy(logits[:, :-1])  # logits at column P-1+t predict action t
        return response_logprobs(logits, batch), entropy

    models = PolicyAndReference(policy, reference, tokenizer, config, config.rollout_size, autocast)
    print(f"grpo: {models.policy_engine.describe()}", file=sys.stderr)

    # -- optimizer, schedule, resume (schedule and checkpoints count iterations) -----------------
    runner = distributed.wrap_model(policy, config, device, precision)  # DDP under torchrun
    optimizer, scheduler, order, log = loop.optimizer_schedule_and_log(config, policy, config.iterations,
                                                                       len(train_prompts), out)  # fmt: skip
    start_step, _ = loop.resume_if_asked(config, out, policy, optimizer, scheduler, order, log)

    checkpoint = loop.checkpoint_saver(config, out, policy, tokenizer, optimizer, scheduler, order)

    # -- evaluation on held-out prompts: policy and reference side by side --------------------
    evaluate = held_out_evaluation(models, eval_prompts, partial(score_parts, rewards), log,
                                   config.seed + _EVAL_SEED_OFFSET, config.eval_generations, device)  # fmt: skip

    if eval_prompts and start_step == 0:
        log.log(0, evaluate(0))

    # -- the loop ------------------------------------------------------------------------------
    step = start_step
    metrics: dict[str, float] = {}
    minibatch = config.batch_size * config.grad_accum
    # Old log-probs are a separate forward only when the policy can move before a row is used:
    # a second epoch, or a later minibatch of the same rollout. Otherwise they equal the new ones.
    need_old = config.ppo_epochs > 1 or config.rollout_size > minibatch or config.kl_coef > 0
    with loop.running(config.iterations, start_step, show_progress, "grpo") as (progress, stop):
        while step < config.iterations:
            iteration = step + 1
            iteration_started = time.perf_counter()
            # 1. rollout: this rank's prompts (under torchrun), G samples each, groups in adjacent rows
            prompts = [train_prompts[i] for i in distributed.shard(order.take(config.prompts_per_iteration))]
            seed = config.seed * _ITERATION_STRIDE + iteration + distributed.rank() * _RANK_SEED_OFFSET
            rollout = models.sample(False, prompts, seed, group)
            batch, mask = rollout.batch.to(device), rollout.batch.response_mask.to(device)
            # 2. score (raw: what users read as "reward"); the EOS penalty shapes what is optimised
            raw_scores, parts = score_parts(rewards, rollout.prompts, rollout.texts)
            scores = shape_scores(raw_scores, rollout.ended, config.missing_eos_penalty, 0.0, False).to(device)
            with torch.no_grad():
                old_logprobs = models.policy_logprobs(batch) if need_old else None
                ref_logprobs = models.reference_logprobs(batch) if config.kl_coef > 0 else None
                # 3. KL in the reward (per token, the score on the last) or nowhere yet
                kl_in_reward = config.kl_coef > 0 and not kl_in_loss
                zeros = torch.zeros(mask.shape, device=device)
                token_rewards, _ = kl_penalized_rewards(
                    scores, old_logprobs if kl_in_reward else zeros, ref_logprobs if kl_in_reward else zeros,
                    mask, config.kl_coef if kl_in_reward else 0.0, config.kl_estimator,
                )  # fmt: skip
                # 4. advantages
                if config.advantage == "reinforce_pp":
                    advantages = reinforce_pp_advantages(token_rewards, mask, config.gamma, distributed.masked_whiten)
                elif config.advantage == "rloo":
                    advantages = rloo_advantages(token_rewards.sum(-1), group)
                else:
                    advantages = group_advantages(token_rewards.sum(-1), group, SCALE_BY_STD[config.loss])
            # 5. update
            update_started = time.perf_counter()
            update = grpo_update(config, optimizer, policy, lambda b: runner(policy_forward, b), batch, mask,
                                 old_logprobs, ref_logprobs if kl_in_loss else None, advantages, iteration, out)  # fmt: skip
            lengths = mask.sum(-1).float()
            metrics = update | {
                "reward": float(raw_scores.mean()),
                "reward_std": float(raw_scores.std()) if len(raw_scores) > 1 else 0.0,
                "frac_reward_zero_std": float(torch.isclose(group_std(raw_scores, group), torch.zeros(())).float().mean()),
                "completions/mean_length": float(lengths.mean()),
                "completions/min_length": float(lengths.min()),
                "completions/max_length": float(lengths.max()),
                "completions/clipped_ratio": float((~rollout.ended).float().mean()),
                "learning_rate": scheduler.get_last_lr()[0],
                "time/rollout": rollout.seconds,
                "time/update": time.perf_counter() - update_started,
                "time/iteration": time.perf_counter() - iteration_started,
            }  # fmt: skip
            for name, values in parts.items():
                column = torch.tensor(values)
                metrics[f"rewards/{name}/mean"] = float(column.mean())
                metrics[f"rewards/{name}/std"] = float(column.std()) if len(values) > 1 else 0.0
            if ref_logprobs is not None:
                # PPO's KL (k1 summed over each completion, at rollout time): one axis for every trainer.
                metrics["objective/kl"] = float(torch.where(mask, kl_k1(old_logprobs, ref_logprobs), 0.0).sum(-1).mean())
                if kl_in_reward:  # TRL's "kl", the mean per-token estimate, from the rollout
                    estimate = KL_ESTIMATORS[config.kl_estimator](old_logprobs, ref_logprobs)
                    metrics["kl"] = float(torch.where(mask, estimate, 0.0).sum() / mask.sum())
            metrics = distributed.all_reduce_metrics(metrics | distributed.memory_metrics(device))
            scheduler.step()
            step = iteration
            loop.finish_step(step, config.iterations, metrics, config,
                             evaluate=partial(evaluate, step) if eval_prompts else None, log=log, progress=progress,
                             progress_fields={"reward": "reward", "kl": "kl"}, checkpoint=checkpoint, stop=stop,
                             label="grpo", unit="iteration")  # fmt: skip

    loop.end_of_run(config, step, evaluate=partial(evaluate, step) if eval_prompts else None, log=log,
                    checkpoint=checkpoint, model=policy, tokenizer=tokenizer, out=out, train_metrics=metrics,
                    gather_weights=False)  # fmt: skip
    return out


def grpo_update(config: GRPOConfig, optimizer, policy, forward, batch: RolloutBatch, mask, old_logprobs,
                ref_logprobs, advantages, iteration: int, out: Path) -> dict[str, float]:  # fmt: skip
    """--ppo-epochs passes over the rollout in shuffled minibatches; metrics averaged over updates."""
    generator = torch.Generator().manual_seed(config.seed * _ITERATION_STRIDE + iteration)
    micro_batch = config.batch_size // distributed.world_size()  # sizes are global under torchrun
    rows, minibatch = len(batch.input_ids), micro_batch * config.grad_accum
    totals: dict[str, float] = {}
    updates = 0
    for _ in range(config.ppo_epochs):
        permutation = torch.randperm(rows, generator=generator).to(mask.device)
        for start in range(0, rows, minibatch):
            step_metrics: dict[str, float] = {}
            for micro in range(start, start + minibatch, micro_batch):
                index = permutation[micro : micro + micro_batch]
                new_logprobs, entropy = forward(batch.rows(index))
                # On-policy without a separate forward: the rollout policy is this one (see need_old).
                old = new_logprobs.detach() if old_logprobs is None else old_logprobs[index]
                loss, loss_metrics = group_policy_loss(
                    new_logprobs, old, advantages[index], mask[index], clip_range=config.clip_range,
                    normalization=NORMALIZATION[config.loss], max_completion_length=config.max_new_tokens,
                    ref_logprobs=None if ref_logprobs is None else ref_logprobs[index], kl_coef=config.kl_coef,
                    kl_estimator=config.kl_estimator,
                )  # fmt: skip
                common.check_finite(loss, iteration, out)
                (loss / config.grad_accum).backward()
                loss_metrics["loss"] = loss.detach()
                loss_metrics["entropy"] = torch.where(mask[index], entropy, 0.0).sum() / mask[index].sum()
                for name, value in loss_metrics.items():
                    step_metrics[name] = step_metrics.get(name, 0.0) + float(value) / config.grad_accum
            step_metrics["grad_norm"] = common.grad_norm_and_clip(policy, config.max_grad_norm)
            common.check_finite_gradients(step_metrics["grad_norm"], iteration, out)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
            for name, value in step_metrics.items():
                totals[name] = totals.get(name, 0.0) + value
    return {k: v / updates for k, v in totals.items()} | {"policy/updates": updates}

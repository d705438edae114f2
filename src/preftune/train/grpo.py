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

import contextlib
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import GRPOConfig
from ..losses.advantages import group_advantages, group_std, reinforce_pp_advantages, rloo_advantages
from ..losses.grpo import group_policy_loss, token_entropy
from ..losses.kl import KL_ESTIMATORS, kl_k1, kl_penalized_rewards
from ..rollout import RolloutEngine
from ..runlog import RunLog
from . import common, distributed
from .ppo import load_prompt_splits
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
from .setup import finish_run, load_model_for_training

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

    @torch.no_grad()
    def in_chunks(fn, batch: RolloutBatch) -> torch.Tensor:
        """`fn` over micro-batches of --batch-size rows, concatenated along rows."""
        return torch.cat([fn(batch.rows(slice(i, i + config.batch_size)))
                          for i in range(0, len(batch.input_ids), config.batch_size)])  # fmt: skip

    def make_engine(model) -> RolloutEngine:
        return RolloutEngine(model, tokenizer, backend=config.rollout_engine, precision=config.rollout_precision,
                             batch_size=config.rollout_size)  # fmt: skip

    policy_engine = make_engine(policy)
    print(f"grpo: {policy_engine.describe()}", file=sys.stderr)
    engines: dict[str, RolloutEngine] = {}

    def sample_from(model_is_reference: bool, prompts, seed: int, n: int):
        settings = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
                        top_p=config.top_p, seed=seed, max_prompt_length=config.max_prompt_length,
                        batch_size=config.rollout_size, n=n)  # fmt: skip
        if not model_is_reference:
            policy_engine.load_weights(policy)
            return sample(policy, tokenizer, prompts, engine=policy_engine, **settings)
        model = reference if reference is not None else policy
        with policy.disable_adapter() if reference is None else contextlib.nullcontext():
            if "reference" not in engines:
                engines["reference"] = make_engine(model)
            return sample(model, tokenizer, prompts, engine=engines["reference"], **settings)

    def ref_logprobs_of(batch: RolloutBatch) -> torch.Tensor:
        return in_chunks(lambda b: reference_logprobs(policy, reference, b, config.temperature, autocast), batch)

    # -- evaluation on held-out prompts: policy and reference side by side --------------------
    reference_eval: dict = {}

    @torch.no_grad()
    def evaluate(step: int) -> dict[str, float]:
        seed, n = config.seed + _EVAL_SEED_OFFSET, config.eval_generations  # the same draws at every eval
        if not reference_eval:  # the reference never changes: sample and score it once
            ref = sample_from(True, eval_prompts, seed, n)
            reference_eval.update(texts=ref.texts, scores=score_parts(rewards, ref.prompts, ref.texts)[0].tolist())
        pol = sample_from(False, eval_prompts, seed, n)
        scores, parts = score_parts(rewards, pol.prompts, pol.texts)
        batch = pol.batch.to(device)
        policy_lp = in_chunks(lambda b: model_logprobs(policy, b, config.temperature, autocast), batch)
        kl = torch.where(batch.response_mask, kl_k1(policy_lp, ref_logprobs_of(batch)), 0.0).sum(-1)
        log.log_samples(step, [
            {"prompt": prompt_text_of(p), "policy": text, "reference": ref_text, "policy_score": s, "reference_score": rs}
            for p, text, ref_text, s, rs in zip(pol.prompts, pol.texts, reference_eval["texts"], scores.tolist(), reference_eval["scores"], strict=True)
        ])  # fmt: skip
        return {
            "eval/scores": float(scores.mean()),
            "eval/ref_scores": sum(reference_eval["scores"]) / len(scores),
            "eval/kl": float(kl.mean()),
            "eval/mean_length": float(batch.response_mask.sum(-1).float().mean()),
        } | {f"eval/rewards/{name}/mean": sum(values) / len(values) for name, values in parts.items()}

    # -- optimizer, schedule, resume (schedule and checkpoints count iterations) -----------------
    runner = distributed.wrap_model(policy, config, device, precision)  # DDP under torchrun
    optimizer = common.make_optimizer(policy, config.lr, config.weight_decay)
    scheduler = common.make_scheduler(
        optimizer, config.scheduler, common.warmup_steps_of(config, config.iterations), config.iterations
    )
    order = common.DataOrder(len(train_prompts), config.seed)
    log = RunLog(out, config, config.report_to, enabled=distributed.is_main())
    start_step = 0
    if config.resume:
        start_step, _ = common.resume_latest(out, policy, optimizer, scheduler, order, log)

    def checkpoint(step: int) -> None:
        common.save_checkpoint(out, step, policy, tokenizer, optimizer, scheduler, order, config, config.keep_last, {})

    if eval_prompts and start_step == 0:
        log.log(0, evaluate(0))

    # -- the loop ------------------------------------------------------------------------------
    progress = common.TrainProgress(config.iterations, start_step, enabled=show_progress, label="grpo")
    stop = common.StopRequest()
    step = start_step
    metrics: dict[str, float] = {}
    minibatch = config.batch_size * config.grad_accum
    # Old log-probs are a separate forward only when the policy can move before a row is used:
    # a second epoch, or a later minibatch of the same rollout. Otherwise they equal the new ones.
    need_old = config.ppo_epochs > 1 or config.rollout_size > minibatch or config.kl_coef > 0
    with stop.installed():
        try:
            while step < config.iterations:
                iteration = step + 1
                iteration_started = time.perf_counter()
                # 1. rollout: this rank's prompts (under torchrun), G samples each, groups in adjacent rows
                prompts = [train_prompts[i] for i in distributed.shard(order.take(config.prompts_per_iteration))]
                seed = config.seed * _ITERATION_STRIDE + iteration + distributed.rank() * _RANK_SEED_OFFSET
                rollout = sample_from(False, prompts, seed, group)
                batch, mask = rollout.batch.to(device), rollout.batch.response_mask.to(device)
                # 2. score (raw: what users read as "reward"); the EOS penalty shapes what is optimised
                raw_scores, parts = score_parts(rewards, rollout.prompts, rollout.texts)
                scores = shape_scores(raw_scores, rollout.ended, config.missing_eos_penalty, 0.0, False).to(device)
                with torch.no_grad():
                    old_logprobs = in_chunks(lambda b: model_logprobs(policy, b, config.temperature, autocast), batch) if need_old else None  # fmt: skip
                    ref_logprobs = ref_logprobs_of(batch) if config.kl_coef > 0 else None
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
                stop.agree()
                if config.eval_every and eval_prompts and step % config.eval_every == 0 and step < config.iterations:
                    metrics |= evaluate(step)
                if step % config.log_every == 0 or step == config.iterations or "eval/scores" in metrics:
                    log.log(step, metrics)
                progress.update(step, {"reward": metrics["reward"], "kl": metrics.get("kl")})
                if (config.save_every and step % config.save_every == 0) or stop.requested:
                    checkpoint(step)
                if stop.requested:
                    print(f"\ngrpo: {stop.requested} received; checkpoint saved at iteration {step}; resume with --resume",
                          file=sys.stderr)  # fmt: skip
                    raise SystemExit(143 if stop.requested == "SIGTERM" else 130)
        finally:
            progress.close()

    final_metrics = evaluate(step) if eval_prompts else {}
    if final_metrics:
        log.log(step, final_metrics)
    checkpoint(step)
    if distributed.is_main():
        finish_run(config, policy, tokenizer, out, final_metrics | {"train/" + k: v for k, v in metrics.items()})
    log.close()
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

"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"): one loop.

    load policy, reference, judge -> for each iteration:
      1. rollout: two completions per prompt from the current policy
      2. rank: the judge (or reward model, or the user's python) scores both; the higher is chosen,
         a tie drops the pair
      3. update: one optimizer step on the DPO loss (`losses/dpo.py`) over the iteration's pairs
      -> log, evaluate on held-out prompts, checkpoint -> final model.

Offline DPO learns from pairs someone sampled once, from another model; here the pairs always
come from the policy being trained, which is what the paper shows closes most of the gap to
RLHF. The loss is the same function `preftune dpo` calls; sampling is the rollout engine's.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ..config import OnlineDPOConfig
from ..losses.dpo import DPO_LOSS_OPTIONS, DPO_LOSSES
from . import common, distributed, loop
from .grpo import load_rewards, score_parts
from .online import PolicyAndReference, held_out_evaluation
from .ppo import load_prompt_splits
from .rollout import (
    response_logits_and_hidden,
    response_logprobs,
    shape_scores,
    warn_if_truncated_sampling,
)
from .run_folder import prepare_run_folder
from .setup import load_model_for_training

_ITERATION_STRIDE = 1_000_003
_EVAL_SEED_OFFSET = 7_919
_RANK_SEED_OFFSET = 104_729


def pick_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows 2i and 2i+1 answer prompt i. Returns, per prompt, the chosen row (the higher score),
    the rejected row, and whether the pair counts: on a tie neither completion is better, so the
    pair's weight is 0 (it stays in the batch so every rank runs the same micro-batches under DDP)."""
    first, second = scores[0::2], scores[1::2]
    index = torch.arange(len(first))
    first_wins = first >= second
    chosen = torch.where(first_wins, 2 * index, 2 * index + 1)
    rejected = torch.where(first_wins, 2 * index + 1, 2 * index)
    return chosen, rejected, first != second


def train_online_dpo(config: OnlineDPOConfig, reward_fn: Callable[[str, str], float] | None = None,
                     show_progress: bool | None = None) -> Path:  # fmt: skip
    """Run online DPO as configured; returns the run folder. `reward_fn(prompt, response)` replaces --reward."""
    distributed.setup(config)
    prepare_run_folder(config)
    show_progress = (sys.stderr.isatty() if show_progress is None else show_progress) and distributed.is_main()
    warn_if_truncated_sampling(config.top_k, config.top_p)
    device = common.pick_device(config.device)
    precision, precision_reason = common.choose_precision(device, config.precision)
    common.seed_everything(config.seed)
    out = Path(config.out)
    print(f"online-dpo: loss={config.loss} beta={config.beta} reward={config.reward if reward_fn is None else 'python callable'} "
          f"device={device} precision={precision} ({precision_reason})", file=sys.stderr)  # fmt: skip
    autocast = lambda: common.autocast(device, precision)  # noqa: E731

    train_prompts, eval_prompts = load_prompt_splits(config)
    print(f"online-dpo: {len(train_prompts)} training prompts, {len(eval_prompts)} held out", file=sys.stderr)
    rewards = load_rewards(config.reward, device, 2 * config.prompts_per_iteration, reward_fn)
    policy, tokenizer = load_model_for_training(config, device)
    policy.eval()
    reference = None if config.lora else copy.deepcopy(policy).requires_grad_(False)
    loss_fn, loss_options = DPO_LOSSES[config.loss], {k: getattr(config, k) for k in DPO_LOSS_OPTIONS[config.loss]}
    rollout_rows = 2 * config.prompts_per_iteration

    models = PolicyAndReference(policy, reference, tokenizer, config, rollout_rows, autocast)

    runner = distributed.wrap_model(policy, config, device, precision)
    optimizer, scheduler, order, log = loop.optimizer_schedule_and_log(config, policy, config.iterations,
                                                                       len(train_prompts), out)  # fmt: skip
    start_step, _ = loop.resume_if_asked(config, out, policy, optimizer, scheduler, order, log)

    checkpoint = loop.checkpoint_saver(config, out, policy, tokenizer, optimizer, scheduler, order)
    evaluate = held_out_evaluation(models, eval_prompts, partial(score_parts, rewards), log,
                                   config.seed + _EVAL_SEED_OFFSET, 1, device)  # fmt: skip

    if eval_prompts and start_step == 0:
        log.log(0, evaluate(0))

    def summed_logprobs(batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs [B] with gradient, and the per-token ones [B, T] detached."""
        with autocast():
            logits, _ = response_logits_and_hidden(policy, batch, config.temperature)
        per_token = torch.where(batch.response_mask, response_logprobs(logits, batch), 0.0)
        return per_token.sum(-1), per_token.detach()

    step = start_step
    metrics: dict[str, float] = {}
    with loop.running(config.iterations, start_step, show_progress, "online-dpo") as (progress, stop):
        while step < config.iterations:
            iteration = step + 1
            iteration_started = time.perf_counter()
            # 1. two completions per prompt (rows 2i and 2i+1 for prompt i)
            prompts = [train_prompts[i] for i in distributed.shard(order.take(config.prompts_per_iteration))]
            seed = config.seed * _ITERATION_STRIDE + iteration + distributed.rank() * _RANK_SEED_OFFSET
            rollout = models.sample(False, prompts, seed, 2)
            batch, mask = rollout.batch.to(device), rollout.batch.response_mask.to(device)
            # 2. rank: the judge picks the winner of each pair, live
            raw_scores, _ = score_parts(rewards, rollout.prompts, rollout.texts)
            scores = shape_scores(raw_scores, rollout.ended, config.missing_eos_penalty, 0.0, False)
            chosen, rejected, decided = pick_pairs(scores)
            weights = decided.to(torch.float32)
            with torch.no_grad():
                ref_token_logprobs = torch.where(mask, models.reference_logprobs(batch), 0.0)
                ref_sums = ref_token_logprobs.sum(-1)
            # 3. one step on the DPO loss over the decided pairs, micro-batch by micro-batch. The
            # denominator is the decided pairs of all ranks / world size: DDP's mean over ranks of
            # each rank's sum over it is the mean over every decided pair (train/distributed.py).
            update_started = time.perf_counter()
            denominator = float(distributed.per_rank_share(weights.sum()))
            totals: dict[str, float] = {}
            policy_token_logprobs = torch.zeros(mask.shape, device=device)
            lengths = mask.sum(-1)
            for start in range(0, len(chosen) if denominator > 0 else 0, config.batch_size):
                c, r = chosen[start : start + config.batch_size], rejected[start : start + config.batch_size]
                w = weights[start : start + config.batch_size].to(device)
                rows = torch.cat([c, r]).to(device)
                sums, per_token = runner(summed_logprobs, batch.rows(rows))
                policy_token_logprobs[rows] = per_token
                loss_per_pair, _ = loss_fn(
                    sums[: len(c)], sums[len(c) :], ref_sums[c], ref_sums[r], beta=config.beta,
                    chosen_lengths=lengths[c], rejected_lengths=lengths[r], **loss_options,
                )  # fmt: skip
                loss = (loss_per_pair * w).sum() / denominator
                common.check_finite(loss, iteration, out)
                loss.backward()
                with torch.no_grad():  # metrics over the decided pairs only, weighted into one mean
                    keep = w > 0
                    if keep.any():
                        _, pair_metrics = loss_fn(
                            sums[: len(c)][keep], sums[len(c) :][keep], ref_sums[c][keep], ref_sums[r][keep],
                            beta=config.beta, chosen_lengths=lengths[c][keep], rejected_lengths=lengths[r][keep],
                            **loss_options,
                        )  # fmt: skip
                        share = float(keep.sum()) / float(weights.sum())
                        for name, value in (pair_metrics | {"loss": loss_per_pair[keep].mean()}).items():
                            totals[name] = totals.get(name, 0.0) + float(value) * share
            if denominator > 0:  # the same decision on every rank (the denominator is global)
                for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                             "logps/chosen", "logps/rejected"):  # fmt: skip
                    totals.setdefault(name, 0.0)  # a rank whose pairs all tied reports 0: the keys must match
                totals["grad_norm"] = common.grad_norm_and_clip(policy, config.max_grad_norm)
                common.check_finite_gradients(totals["grad_norm"], iteration, out)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            kept = torch.nonzero(decided).squeeze(-1)
            chosen, rejected = chosen[kept], rejected[kept]
            # The rollout's KL (k1 summed per completion) and entropy, on the completions the update read.
            rows = torch.cat([chosen, rejected]).to(device)
            kl = (policy_token_logprobs[rows] - ref_token_logprobs[rows]).sum(-1).mean() if len(rows) else torch.zeros(())
            entropy = -policy_token_logprobs[rows].sum(-1).mean() if len(rows) else torch.zeros(())
            metrics = totals | {
                "objective/kl": float(kl),
                "objective/entropy": float(entropy),
                "objective/non_score_reward": -config.beta * float(kl),
                "objective/rlhf_reward": float(raw_scores.mean()) - config.beta * float(kl),
                "objective/scores": float(raw_scores.mean()),
                "objective/scores_margin": float((scores[chosen] - scores[rejected]).mean()) if len(kept) else 0.0,
                "objective/ties": 1.0 - len(kept) / len(prompts),
                "val/contain_eos_token": float(rollout.ended.float().mean()),
                "completions/mean_length": float(lengths.float().mean()),
                "beta": config.beta,
                "learning_rate": scheduler.get_last_lr()[0],
                "time/rollout": rollout.seconds,
                "time/update": time.perf_counter() - update_started,
                "time/iteration": time.perf_counter() - iteration_started,
            }  # fmt: skip
            metrics = distributed.all_reduce_metrics(metrics | distributed.memory_metrics(device))
            scheduler.step()
            step = iteration
            loop.finish_step(step, config.iterations, metrics, config,
                             evaluate=partial(evaluate, step) if eval_prompts else None, log=log, progress=progress,
                             progress_fields={"score": "objective/scores", "kl": "objective/kl"},
                             checkpoint=checkpoint, stop=stop,
                             label="online-dpo", unit="iteration")  # fmt: skip

    loop.end_of_run(config, step, evaluate=partial(evaluate, step) if eval_prompts else None, log=log,
                    checkpoint=checkpoint, model=policy, tokenizer=tokenizer, out=out, train_metrics=metrics,
                    gather_weights=False)  # fmt: skip
    return out

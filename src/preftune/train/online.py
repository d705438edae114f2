"""What the group-baseline and online-DPO loops share around their updates: drawing completions
from the policy or its reference through rollout engines, log-probs in micro-batches, and the
held-out evaluation that shows policy and reference side by side.

PPO keeps its own (`train/ppo.py`): a value head rides on its forward and it scores with one
reward without parts, so its pieces are not the same logic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..losses.kl import kl_k1
from ..rollout import RolloutEngine
from ..runlog import RunLog
from .rollout import RolloutBatch, Samples, model_logprobs, prompt_text_of, reference_logprobs
from .rollout import sample as sample_completions


class PolicyAndReference:
    """The policy and its KL anchor: `reference` is a frozen copy, or None with LoRA, where the
    anchor is the policy with its adapter switched off (no second copy of the weights)."""

    def __init__(self, policy, reference, tokenizer, config, rollout_rows: int, autocast):
        self.policy, self.reference, self.tokenizer, self.config = policy, reference, tokenizer, config
        self.rollout_rows, self.autocast = rollout_rows, autocast
        self.policy_engine = self._make_engine(policy)
        # Made on the first reference draw: a run without held-out prompts never needs it.
        self._reference_engine: RolloutEngine | None = None

    def _make_engine(self, model) -> RolloutEngine:
        return RolloutEngine(model, self.tokenizer, backend=self.config.rollout_engine,
                             precision=self.config.rollout_precision, batch_size=self.rollout_rows)  # fmt: skip

    def sample(self, from_reference: bool, prompts, seed: int, n: int) -> Samples:
        """`n` completions of each prompt; the policy's engine gets the current weights first."""
        config = self.config
        settings = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
                        top_p=config.top_p, seed=seed, max_prompt_length=config.max_prompt_length,
                        batch_size=self.rollout_rows, n=n)  # fmt: skip
        if not from_reference:
            self.policy_engine.load_weights(self.policy)
            return sample_completions(
                self.policy, self.tokenizer, prompts, engine=self.policy_engine, **settings
            )
        model = self.reference if self.reference is not None else self.policy
        with self.policy.disable_adapter() if self.reference is None else contextlib.nullcontext():
            if self._reference_engine is None:
                self._reference_engine = self._make_engine(model)
            return sample_completions(
                model, self.tokenizer, prompts, engine=self._reference_engine, **settings
            )

    @torch.no_grad()
    def in_chunks(self, fn, batch: RolloutBatch) -> torch.Tensor:
        """`fn` over micro-batches of --batch-size rows, concatenated along rows."""
        size = self.config.batch_size
        return torch.cat([fn(batch.rows(slice(i, i + size))) for i in range(0, len(batch.input_ids), size)])

    def policy_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """log pi(a_t|s_t) [B, T] of the current policy, without gradient."""
        return self.in_chunks(
            lambda b: model_logprobs(self.policy, b, self.config.temperature, self.autocast), batch
        )

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """log pi_ref(a_t|s_t) [B, T], without gradient."""
        return self.in_chunks(
            lambda b: reference_logprobs(
                self.policy, self.reference, b, self.config.temperature, self.autocast
            ),
            batch,
        )


def held_out_evaluation(models: PolicyAndReference, prompts, score: Callable, log: RunLog, seed: int,
                        generations: int, device: torch.device) -> Callable[[int], dict[str, float]]:  # fmt: skip
    """`evaluate(step)`: `generations` completions per held-out prompt from policy and reference,
    their scores (`score(prompts, texts)` -> (scores [B], {part name: scores})), the policy's KL
    from the reference, and the samples logged side by side. One `seed` for every call: the same
    draws at every eval, so the curves compare like with like."""
    reference_eval: dict = {}

    @torch.no_grad()
    def evaluate(step: int) -> dict[str, float]:
        if not reference_eval:  # the reference never changes: sample and score it once
            ref = models.sample(True, prompts, seed, generations)
            reference_eval.update(texts=ref.texts, scores=score(ref.prompts, ref.texts)[0].tolist())
        pol = models.sample(False, prompts, seed, generations)
        scores, parts = score(pol.prompts, pol.texts)
        batch = pol.batch.to(device)
        kl = torch.where(batch.response_mask, kl_k1(models.policy_logprobs(batch), models.reference_logprobs(batch)),
                         0.0).sum(-1)  # fmt: skip
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

    return evaluate

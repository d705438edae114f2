"""PPO's rollout side: sample completions, score them, and lay them out as per-token tensors.

A rollout batch is one row per (prompt, completion) in a fixed layout: the prompt is left-padded
to a shared width P, the completion right-padded to a shared width T, so every completion starts
at column P and the response region is the same slice `[P, P + T)` of every row. Position ids
come from the attention mask (left padding must not shift positions), and masks come from
lengths, never from `input_ids == pad_id` (pad == EOS for SmolLM2; DESIGN.md section 5).

Action t of a row (the t-th completion token) is predicted by the logits at column P - 1 + t;
the value V_t of the state before it is read at the same column.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..data.schema import Message
from ..generate import generate_completions
from ..models.logprobs import token_logprobs
from .distributed import masked_whiten  # losses.advantages' own, over all ranks under torchrun

# A plain reward: (prompt text, response text) -> score. Judges from the registry also qualify.
Reward = Callable[[str, str], float]


@dataclass
class RolloutBatch:
    """B rows of [left-padded prompt | right-padded completion]; see the module note."""

    input_ids: torch.Tensor  # [B, P + T] long
    attention_mask: torch.Tensor  # [B, P + T] long, 1 on real tokens
    position_ids: torch.Tensor  # [B, P + T] long, 0 at each row's first real token
    response_mask: torch.Tensor  # [B, T] bool, true on completion tokens (the closing EOS included)
    context_length: int  # P

    @property
    def response_length(self) -> int:
        return self.response_mask.shape[1]

    def rows(self, index: torch.Tensor | list[int]) -> RolloutBatch:
        """A sub-batch (a PPO minibatch) with the same P and T, so per-token tensors still line up."""
        return RolloutBatch(
            self.input_ids[index], self.attention_mask[index], self.position_ids[index],
            self.response_mask[index], self.context_length,
        )  # fmt: skip

    def to(self, device) -> RolloutBatch:
        return RolloutBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
            self.response_mask.to(device), self.context_length,
        )  # fmt: skip


def layout_rollout(
    prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], pad_id: int
) -> RolloutBatch:
    """Lay prompts and completions out as a `RolloutBatch` (left-pad prompts, right-pad completions)."""
    if not prompt_ids or len(prompt_ids) != len(completion_ids):
        raise ValueError("layout_rollout needs one completion per prompt, and at least one of each")
    if any(len(c) == 0 for c in completion_ids):
        raise ValueError("layout_rollout: an empty completion has no action to score")
    width_prompt = max(len(p) for p in prompt_ids)
    width_response = max(len(c) for c in completion_ids)
    rows = len(prompt_ids)
    input_ids = torch.full((rows, width_prompt + width_response), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros((rows, width_response), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        start = width_prompt - len(prompt)
        input_ids[i, start:width_prompt] = torch.tensor(prompt, dtype=torch.long)
        input_ids[i, width_prompt : width_prompt + len(completion)] = torch.tensor(
            completion, dtype=torch.long
        )
        attention_mask[i, start : width_prompt + len(completion)] = 1
        response_mask[i, : len(completion)] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return RolloutBatch(input_ids, attention_mask, position_ids, response_mask, width_prompt)


def response_logits_and_hidden(
    model, batch: RolloutBatch, temperature: float = 1.0, need_hidden: bool = False
):
    """Logits [B, T + 1, V] at columns P - 1 .. P + T - 1 (divided by `temperature`, so they are the
    sampling distribution's), and the last hidden states [B, T, H] at P - 1 .. P + T - 2 if asked."""
    width = batch.response_length
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        output_hidden_states=need_hidden,
        logits_to_keep=width + 1,  # the head runs on the response columns only, not the prompt
    )
    logits = out.logits[:, -(width + 1) :].float() / temperature
    hidden = out.hidden_states[-1][:, batch.context_length - 1 : -1] if need_hidden else None
    return logits, hidden


def response_logprobs(logits: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """log pi(a_t | s_t) [B, T] of the sampled completion tokens, from `response_logits_and_hidden`."""
    # token_logprobs shifts by one: logits at column P-1+t score the token at column P+t.
    return token_logprobs(logits, batch.input_ids[:, batch.context_length - 1 :])


@torch.no_grad()
def model_logprobs(model, batch: RolloutBatch, temperature: float, autocast) -> torch.Tensor:
    """log-probs [B, T] of the sampled completion tokens under `model`, without gradient."""
    with autocast():
        logits, _ = response_logits_and_hidden(model, batch, temperature)
    return response_logprobs(logits, batch)


def reference_logprobs(policy, reference, batch: RolloutBatch, temperature: float, autocast) -> torch.Tensor:
    """Reference log-probs [B, T]: a frozen copy, or (reference None) the LoRA policy with its adapter off."""
    if reference is not None:
        return model_logprobs(reference, batch, temperature, autocast)
    with policy.disable_adapter():
        return model_logprobs(policy, batch, temperature, autocast)


def warn_if_truncated_sampling(top_k: int, top_p: float) -> None:
    if top_k > 0 or top_p < 1.0:
        warnings.warn(
            f"ppo: top_k={top_k} / top_p={top_p} sample from a truncated distribution, but the ratio and "
            "the KL penalty use the full one's log-probs; the KL estimate is biased. Use --top-k 0 --top-p 1.",
            stacklevel=2,
        )


def prompt_text_of(messages: list[Message]) -> str:
    """The prompt as one line of text for logs and plain-callable rewards: the last user message."""
    return next((m.content for m in reversed(messages) if m.role == "user"), messages[-1].content)


def score_responses(reward, prompts: list[list[Message]], responses: list[str]) -> list[float]:
    """Scores of each (prompt, response). A registry `Judge` gets the whole conversation and scores
    in batches (a reward model reads the prompt); a plain callable gets `(prompt text, response)`."""
    from ..judges.registry import Judge, score_batch

    if isinstance(reward, Judge):
        return score_batch(reward, prompts, responses)
    return [float(reward(prompt_text_of(p), r)) for p, r in zip(prompts, responses, strict=True)]


@dataclass
class Samples:
    """Completions (one row each, a prompt's rows together), with what scoring and the layout need."""

    prompts: list[list[Message]]  # the prompt of each row (repeated n times for n samples per prompt)
    texts: list[str]  # decoded completions (special tokens removed)
    batch: RolloutBatch
    ended: torch.Tensor  # [B] bool: the completion closed with EOS (not cut at max_new_tokens)
    seconds: float
    engine_logprobs: torch.Tensor  # [B, T] the rollout engine's log-probs of the sampled tokens (0 on padding)


def sample(
    model,
    tokenizer,
    prompts: list[list[Message]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    max_prompt_length: int,
    batch_size: int,
    engine=None,
    n: int = 1,
) -> Samples:
    """`n` seeded completions per prompt from the rollout engine (`generate_completions`), laid out
    one row per completion, the `n` rows of a prompt next to each other (a group, for GRPO)."""
    result = generate_completions(
        model, tokenizer, prompts, n, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, top_k=top_k, seed=seed, batch_size=batch_size, max_prompt_length=max_prompt_length,
        engine=engine,
    )  # fmt: skip
    completions = [c for per_prompt in result.completion_ids for c in per_prompt]
    prompt_ids = [ids for ids, per_prompt in zip(result.prompt_ids, result.completion_ids, strict=True) for _ in per_prompt]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = layout_rollout(prompt_ids, completions, pad_id)
    ended = torch.tensor([done for per_prompt in result.finished for done in per_prompt])
    engine_logprobs = torch.zeros(batch.response_mask.shape)
    for row, logprobs in enumerate(lp for per_prompt in result.logprobs for lp in per_prompt):
        engine_logprobs[row, : len(logprobs)] = torch.tensor(logprobs)
    rows = [p for p in prompts for _ in range(n)]
    texts = [t for per_prompt in result.texts for t in per_prompt]
    return Samples(rows, texts, batch, ended, result.seconds, engine_logprobs)


def shape_scores(
    raw: torch.Tensor, ended: torch.Tensor, missing_eos_penalty: float, score_clip: float, normalize: bool
) -> torch.Tensor:
    """The score PPO optimises: minus a penalty where no EOS closed the completion (it was cut at
    --max-new-tokens; TRL's `missing_eos_penalty`), clipped to [-c, c], optionally whitened over
    the batch, all ranks' rows under torchrun (mean 0, std 1: the judge's scale then stops mattering)."""
    scores = raw - missing_eos_penalty * (~ended).to(raw.dtype)
    if score_clip > 0:
        scores = scores.clamp(-score_clip, score_clip)
    if normalize and scores.numel() > 1:
        scores = masked_whiten(scores, torch.ones_like(scores, dtype=torch.bool))
    return scores

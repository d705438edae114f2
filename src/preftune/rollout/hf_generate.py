"""The `hf` backend: transformers' `generate` in fixed batches, for any causal-LM architecture.

This is how preftune sampled before the slot engine, kept for models the slot engine does not
support and as the benchmark's baseline. Prompts are left-padded (every row's next token sits at
the same column) and the attention mask comes from lengths, never from `ids == pad_id`
(pad == EOS for SmolLM2). Per-token log-probs come from `generate`'s raw logits.
"""

from __future__ import annotations

import torch

from .progress import RolloutProgress
from .sampling import SamplingParams


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and the attention mask built from lengths."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def generate_hf(
    model,
    prompt_ids: list[list[int]],
    n: int,
    params: SamplingParams,
    batch_size: int,
    pad_id: int,
    eos_ids: set[int],
    precision: str,
    progress: RolloutProgress | None = None,
) -> tuple[list[list[list[int]]], list[list[list[float]]]]:
    """`n` completions per prompt and their log-probs; `batch_size` counts sequences per call."""
    device = next(model.parameters()).device
    prompts_per_batch = max(1, batch_size // n)
    completions: list[list[list[int]]] = []
    logprobs: list[list[list[float]]] = []
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(device.type, enabled=False)
    )
    was_training = model.training
    model.eval()
    try:
        # Seed once for the whole call, without disturbing the caller's global RNG stream.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
            torch.manual_seed(params.seed)
            for first in range(0, len(prompt_ids), prompts_per_batch):
                rows = prompt_ids[first : first + prompts_per_batch]
                ids, mask = left_pad(rows, pad_id)
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=True,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    max_new_tokens=params.max_new_tokens,
                    num_return_sequences=n,
                    eos_token_id=sorted(eos_ids),
                    pad_token_id=pad_id,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
                sampled = out.sequences[:, ids.shape[1] :]
                step_logprobs = torch.stack(
                    [torch.log_softmax(step.float() / params.temperature, -1) for step in out.logits], dim=1
                ).gather(-1, sampled[:, :, None]).squeeze(-1)  # fmt: skip
                for p in range(len(rows)):
                    per_prompt, per_logprobs = [], []
                    for k in range(n):
                        tokens = _cut_at_eos(sampled[p * n + k].tolist(), eos_ids)
                        per_prompt.append(tokens)
                        per_logprobs.append(step_logprobs[p * n + k, : len(tokens)].tolist())
                        if progress:
                            progress.tokens(len(tokens))
                            progress.sequence_done(len(tokens))
                    completions.append(per_prompt)
                    logprobs.append(per_logprobs)
    finally:
        model.train(was_training)
    return completions, logprobs


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Keep tokens up to and including the first EOS; `generate` pads finished rows after it."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens

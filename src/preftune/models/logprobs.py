"""Per-sequence log-probabilities of completions, from logits and masks.

Definition (DESIGN.md section 6, the same as TRL 1.16 and the DPO reference code): the log-prob of
a completion is the sum, over completion tokens, of log_softmax(logits[:, :-1]) gathered at
input_ids[:, 1:]; prompt and padding positions are masked out. Token t is predicted by the
logits at position t-1, hence the shift by one.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) for t >= 1.

    logits: [B, T, V]; input_ids: [B, T] -> [B, T-1] (position t-1 holds the log-prob of token t).
    """
    # logsumexp + gather instead of a full log_softmax: the same numbers without materialising a
    # second [B, T, V] tensor (SmolLM2's vocabulary is 49,152 wide).
    shifted = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = torch.gather(shifted, -1, targets).squeeze(-1)
    return picked - torch.logsumexp(shifted, dim=-1)


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of completion-token log-probs per row, and the number of completion tokens.

    logits: [B, T, V]; input_ids: [B, T]; completion_mask: [B, T], 1 at completion tokens (built
    from lengths, never from `input_ids == pad`, since pad == EOS for SmolLM2).
    Returns (logps [B], token_counts [B]).
    """
    mask = completion_mask[:, 1:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    per_token = token_logprobs(logits, input_ids)
    return (per_token * mask).sum(-1), mask.sum(-1)


def batch_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward a `SequenceBatch` and return per-row completion log-prob sums and token counts."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return sequence_logprobs(logits, batch.input_ids, batch.completion_mask)


def pair_logprobs(model, batch) -> dict[str, torch.Tensor]:
    """Forward a `PairBatch`: chosen and rejected log-prob sums [B] and their token counts [B]."""
    logps, counts = batch_logprobs(model, batch.sequences)
    b = batch.num_pairs
    return {
        "chosen_logps": logps[:b],
        "rejected_logps": logps[b:],
        "chosen_lengths": counts[:b],
        "rejected_lengths": counts[b:],
    }

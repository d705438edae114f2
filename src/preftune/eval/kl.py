"""Monte-Carlo estimate of the sequence-level KL(pi || pi_ref), with a 95% interval.

KL(pi || pi_ref) = E_{y ~ pi(.|x)} [log pi(y|x) - log pi_ref(y|x)]. Sample completions from the
policy, score each sampled sequence under both models with teacher forcing (sum of token
log-probs, `models/logprobs.py`), and average the log-ratio over samples and prompts. The
estimate is unbiased; a single term can be negative, the mean cannot be in expectation. The
interval is the normal (CLT) one, mean +- 1.96 * sd / sqrt(n).

The samples must come from the distribution being scored: completions drawn at temperature T are
scored with logits / T under both models, so the figure is the KL between the two *sampling*
distributions at T. Top-p / top-k truncation changes the sampling distribution without being
scored here: the estimate is then biased, and `run.py` says so.

Completions cut at max_new_tokens without EOS are scored as prefixes; the KL is then that of the
distributions over "first max_new_tokens tokens, or fewer ending in EOS", which is what was sampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.batching import collate_sequences
from ..models.logprobs import sequence_logprobs

Z95 = 1.959963984540054


@dataclass
class KLEstimate:
    mean: float
    ci95: tuple[float, float]
    std: float  # of the per-sequence log-ratios
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": list(self.ci95), "std": self.std, "n": self.n}


@torch.no_grad()
def completion_logprobs(
    model,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    pad_id: int,
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """log p(completion | prompt) for each row, summed over completion tokens, at `temperature` [N]."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for first in range(0, len(prompt_ids), batch_size):
            rows = list(
                zip(
                    prompt_ids[first : first + batch_size],
                    completion_ids[first : first + batch_size],
                    strict=True,
                )
            )
            batch = collate_sequences([(list(p), list(c)) for p, c in rows], pad_id).to(device)
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).logits
            logps, _ = sequence_logprobs(logits.float() / temperature, batch.input_ids, batch.completion_mask)
            out.append(logps.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def sequence_log_ratios(
    policy,
    reference,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    pad_id: int,
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> np.ndarray:
    """log pi(y|x) - log pi_ref(y|x) for each (prompt, sampled completion) row [N]."""
    policy_logps = completion_logprobs(
        policy, prompt_ids, completion_ids, pad_id, temperature=temperature, batch_size=batch_size
    )
    ref_logps = completion_logprobs(
        reference, prompt_ids, completion_ids, pad_id, temperature=temperature, batch_size=batch_size
    )
    return (policy_logps - ref_logps).double().numpy()


def kl_estimate(log_ratios: Sequence[float]) -> KLEstimate:
    """Mean of the per-sequence log-ratios with a normal 95% interval (module docstring)."""
    values = np.asarray(log_ratios, dtype=float)
    if values.size == 0:
        raise ValueError("KL estimate of zero samples")
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    half = Z95 * std / math.sqrt(values.size)
    return KLEstimate(mean, (mean - half, mean + half), std, int(values.size))


def monte_carlo_kl(
    policy,
    reference,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    pad_id: int,
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> KLEstimate:
    """KL(pi || pi_ref) from completions sampled from `policy` (one row per sample)."""
    ratios = sequence_log_ratios(
        policy, reference, prompt_ids, completion_ids, pad_id, temperature=temperature, batch_size=batch_size
    )
    return kl_estimate(ratios)

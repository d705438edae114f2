"""Drawing the next token from a batch of logits: temperature, top-k, top-p, seeded.

Pure functions of tensors, like `losses/`. The engine calls `sample_next` once per decode step on
the last position's logits only.

Speed notes (why this is not `generate`'s logits-processor chain, which sorts the whole
vocabulary for top-p and draws with `multinomial`; on this project's CPU at 128 rows x 49,152
tokens a full sort took about 300 ms and `multinomial` about 145 ms, against about 150 ms for the
whole SmolLM2 decode step):
- With top-k and top-p both off nothing is sorted: one uniform per row is looked up in the
  cumulative sum of the probabilities (inverse-CDF sampling, a binary search per row).
- top-k uses `topk` (a partial selection, k << V); top-p is then applied to those k.
- top-p alone first takes the `NUCLEUS_CANDIDATES` most likely tokens. Where their mass reaches
  top_p, the nucleus lies inside them and nothing else is sorted; the few rows where it does not
  (flat distributions) are sorted whole. The result is exactly the full-sort nucleus.
- Among a handful of kept candidates the draw is the exponential race, argmax_i p_i / E_i with
  E_i ~ Exp(1), which picks i with probability p_i (Huijben et al. 2022, "A Review of the
  Gumbel-max Trick", section 2).

The log-prob reported for each drawn token is that of the *untruncated* tempered distribution,
log_softmax(logits / T)[token]: the quantity the trainer recomputes with its own teacher-forced
forward (`train/rollout.py: response_logprobs`), so the two can be compared token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to draw: the settings `generate`, vLLM and TRL share, with the same meanings."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 turns it off
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (sampling), got {self.temperature}; use a small value for near-greedy output"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or positive, got {self.top_k}")

    @property
    def truncated(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0


NUCLEUS_CANDIDATES = 64  # top-p looks at this many tokens first (see the module note)


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row.

    logits: [B, V] raw next-token logits (any float dtype). Returns (tokens [B] long,
    logprobs [B] fp32), the log-probs under the untruncated tempered distribution.
    """
    scaled = logits.float() / params.temperature
    log_normalizer = scaled.logsumexp(dim=-1, keepdim=True)  # [B, 1]
    if params.top_k > 0:
        tokens = _draw_top_k(scaled - log_normalizer, params.top_k, params.top_p, generator)
    elif params.top_p < 1.0:
        tokens = _draw_top_p(scaled, log_normalizer, params.top_p, generator)
    else:
        tokens = _inverse_cdf(scaled, log_normalizer, generator)
    return tokens, (scaled.gather(-1, tokens[:, None]) - log_normalizer).squeeze(-1)


def _inverse_cdf(scaled: torch.Tensor, log_normalizer: torch.Tensor, generator) -> torch.Tensor:
    """Token i with probability p_i: the first index whose cumulative probability exceeds u * total."""
    cumulative = (scaled - log_normalizer).exp_().cumsum_(dim=-1)
    draw = torch.rand((scaled.shape[0], 1), generator=generator, device=scaled.device) * cumulative[:, -1:]
    # right=True: a zero-probability token has an empty interval and is never returned.
    return torch.searchsorted(cumulative, draw, right=True).squeeze(-1).clamp_max_(scaled.shape[-1] - 1)


def _exponential_race(logprobs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """argmax_i p_i / E_i, E_i ~ Exp(1), over a few candidates (-inf never wins).
    Computed as log p_i - log E_i so tiny probabilities do not underflow."""
    noise = torch.empty_like(logprobs).exponential_(generator=generator)
    return (logprobs - noise.log()).argmax(dim=-1)


def _draw_top_k(
    logprobs: torch.Tensor, k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Restrict to the k most likely tokens (then to their nucleus if top_p < 1) and draw."""
    k = min(k, logprobs.shape[-1])
    top_logprobs, top_index = logprobs.topk(k, dim=-1)  # sorted, largest first
    if top_p < 1.0:  # the nucleus of the renormalised top-k distribution, as `generate` applies them
        top_logprobs = _nucleus_mask(top_logprobs - top_logprobs.logsumexp(-1, keepdim=True), top_p)
    choice = _exponential_race(top_logprobs, generator)
    return top_index.gather(-1, choice[:, None]).squeeze(-1)


def _draw_top_p(
    scaled: torch.Tensor, log_normalizer: torch.Tensor, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """The nucleus from the top candidates where their mass reaches top_p, else from a full sort."""
    vocab = scaled.shape[-1]
    top_logprobs, top_index = scaled.topk(min(NUCLEUS_CANDIDATES, vocab), dim=-1)
    top_logprobs = top_logprobs - log_normalizer
    choice = _exponential_race(_nucleus_mask(top_logprobs, top_p), generator)
    tokens = top_index.gather(-1, choice[:, None]).squeeze(-1)
    # If the candidates hold at least top_p of the mass, every later token has at least top_p
    # before it and is outside the nucleus, so the candidates contain the whole nucleus. The
    # other rows (flat distributions) are drawn again from their whole sorted row.
    uncovered = (top_logprobs.exp().sum(-1) < top_p).nonzero().squeeze(-1)
    if uncovered.numel():
        sorted_logprobs, order = (scaled[uncovered] - log_normalizer[uncovered]).sort(dim=-1, descending=True)
        choice = _exponential_race(_nucleus_mask(sorted_logprobs, top_p), generator)
        tokens[uncovered] = order.gather(-1, choice[:, None]).squeeze(-1)
    return tokens


def _nucleus_mask(sorted_logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """-inf on every token past the nucleus of `sorted_logprobs` (each row sorted, largest first).

    A token stays when the probability mass strictly before it is below top_p, so the most likely
    token always stays and the kept set is the smallest whose mass reaches top_p (Holtzman et al.
    2020, "The Curious Case of Neural Text Degeneration", eq. 2). The renormalisation the paper
    applies is implicit: the exponential race only compares the kept tokens with each other.
    """
    probs = sorted_logprobs.exp()
    mass_before = probs.cumsum(dim=-1) - probs
    return sorted_logprobs.masked_fill(mass_before >= top_p, float("-inf"))


def truncated_distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The exact distribution [B, V] that `sample_next` draws from: for tests (a chi-square against
    observed frequencies) and for anyone who wants to see what top-k/top-p keep."""
    logprobs = torch.log_softmax(logits.double() / params.temperature, dim=-1)
    keep = torch.ones_like(logprobs, dtype=torch.bool)
    if params.top_k > 0:
        threshold = logprobs.topk(min(params.top_k, logprobs.shape[-1]), dim=-1).values[:, -1:]
        keep &= logprobs >= threshold
    if params.top_p < 1.0:
        masked = logprobs.masked_fill(~keep, float("-inf"))
        sorted_logprobs, order = masked.sort(dim=-1, descending=True)
        kept_sorted = torch.isfinite(_nucleus_mask(sorted_logprobs - sorted_logprobs.logsumexp(-1, keepdim=True), params.top_p))
        keep &= torch.zeros_like(keep).scatter(-1, order, kept_sorted)
    probs = logprobs.exp() * keep
    return probs / probs.sum(-1, keepdim=True)

"""`sample_next` draws from exactly the distribution it claims: chi-square against the closed form."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from preftune.rollout.sampling import NUCLEUS_CANDIDATES, SamplingParams, sample_next, truncated_distribution

DRAWS = 40_000

# A peaked row (top-p's candidates hold the nucleus) and a flat row over a vocabulary wider than
# the candidate count (top-p falls back to a full sort): both code paths are exercised.
VOCAB = NUCLEUS_CANDIDATES + 36


def _logits() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(VOCAB, generator=generator) * 1.5
    flat = torch.randn(VOCAB, generator=generator) * 0.3
    return torch.stack([peaked, flat])


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=7),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=1.0, top_p=0.5),
        SamplingParams(temperature=0.8, top_k=20, top_p=0.8),
    ],
    ids=["t1", "t0.7", "topk7", "topp0.9", "topp0.5", "topk20-topp0.8"],
)
def test_frequencies_match_the_exact_distribution(params):
    logits = _logits()
    expected = truncated_distribution(logits, params)
    for row in range(logits.shape[0]):
        tokens, _ = sample_next(logits[row].expand(DRAWS, VOCAB), params, torch.Generator().manual_seed(row + 1))
        counts = torch.bincount(tokens, minlength=VOCAB).double()
        kept = expected[row] > 0
        assert counts[~kept].sum() == 0, "a token outside top-k / the nucleus was drawn"
        # Pool the rare categories so every expected count is at least 5 (the test's validity rule).
        probs, observed = expected[row][kept], counts[kept]
        rare = probs * DRAWS < 5
        if rare.any():
            probs = torch.cat([probs[~rare], probs[rare].sum()[None]])
            observed = torch.cat([observed[~rare], observed[rare].sum()[None]])
        result = chisquare(observed.numpy(), (probs * DRAWS).numpy())
        assert result.pvalue > 1e-4, f"row {row}: chi-square p = {result.pvalue:.2e}"


def test_truncation_keeps_what_it_should():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    probs = torch.softmax(logits, -1)[0]
    top2 = truncated_distribution(logits, SamplingParams(temperature=1.0, top_k=2))[0]
    assert torch.allclose(top2, torch.tensor([probs[0], probs[1], 0, 0, 0]).double() / (probs[0] + probs[1]))
    # The nucleus is the smallest prefix whose mass reaches top_p: p0 alone is 0.64 < 0.7.
    nucleus = truncated_distribution(logits, SamplingParams(temperature=1.0, top_p=0.7))[0]
    assert (nucleus > 0).tolist() == [True, True, False, False, False]


def test_reported_logprob_is_the_untruncated_tempered_one():
    logits = _logits()
    params = SamplingParams(temperature=0.7, top_k=5)
    tokens, logprobs = sample_next(logits, params, torch.Generator().manual_seed(0))
    exact = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logprobs, exact, atol=1e-6)


def test_seeded_draws_repeat():
    logits = _logits().repeat(50, 1)
    for params in (SamplingParams(), SamplingParams(top_p=0.9), SamplingParams(top_k=3)):
        first, _ = sample_next(logits, params, torch.Generator().manual_seed(5))
        again, _ = sample_next(logits, params, torch.Generator().manual_seed(5))
        other, _ = sample_next(logits, params, torch.Generator().manual_seed(6))
        assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(temperature=0), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**bad)

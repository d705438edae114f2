"""The Monte-Carlo sequence KL against the exact KL of two tiny models with enumerable outputs."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.data.schema import user_prompt
from preftune.eval.kl import kl_estimate, monte_carlo_kl
from preftune.generate import generate_completions
from preftune.models.tiny import tiny_model


def _peaky_model(tokenizer, seed):
    """A tiny model whose (untied) output head is large enough that two seeds disagree by nats."""
    model = tiny_model(tokenizer, seed=seed, tie_word_embeddings=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.25)
    return model.eval()


@torch.no_grad()
def exact_two_token_kl(policy, reference, prompt_ids, eos_id, temperature):
    """KL over every completion of at most two tokens, by enumeration:
    sum_t1 p(t1) [log p(t1)/q(t1) + (t1 != EOS) KL(p(.|t1) || q(.|t1))]."""
    ids = torch.tensor([prompt_ids])
    first_p = torch.log_softmax(policy(ids).logits[0, -1] / temperature, -1)
    first_q = torch.log_softmax(reference(ids).logits[0, -1] / temperature, -1)
    vocab = first_p.shape[0]
    rows = torch.cat([ids.repeat(vocab, 1), torch.arange(vocab)[:, None]], dim=1)  # every first token
    second_p = torch.log_softmax(policy(rows).logits[:, -1] / temperature, -1)
    second_q = torch.log_softmax(reference(rows).logits[:, -1] / temperature, -1)
    second_kl = (second_p.exp() * (second_p - second_q)).sum(-1)
    second_kl[eos_id] = 0.0  # generation stops at EOS: no second token
    return float((first_p.exp() * (first_p - first_q + second_kl)).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_monte_carlo_kl_matches_exact_kl(tiny_tokenizer, temperature):
    policy, reference = _peaky_model(tiny_tokenizer, 0), _peaky_model(tiny_tokenizer, 1)
    samples = generate_completions(policy, tiny_tokenizer, [user_prompt("Hi")], n=600, max_new_tokens=2,
                                   temperature=temperature, top_p=1.0, top_k=0, seed=0, batch_size=600)  # fmt: skip
    prompt_ids = samples.prompt_ids[0]
    completions = samples.completion_ids[0]
    assert all(1 <= len(c) <= 2 for c in completions)
    estimate = monte_carlo_kl(policy, reference, [prompt_ids] * len(completions), completions,
                              tiny_tokenizer.pad_token_id, temperature=temperature, batch_size=300)  # fmt: skip
    exact = exact_two_token_kl(policy, reference, prompt_ids, tiny_tokenizer.eos_token_id, temperature)
    assert exact > 1.0  # the two models really differ; a KL near 0 would make this test weak
    standard_error = estimate.std / math.sqrt(estimate.n)
    assert abs(estimate.mean - exact) < 3.5 * standard_error
    assert standard_error < 0.1 * exact  # and the test has the power to see a wrong estimator


def test_kl_of_a_model_with_itself_is_zero(tiny_tokenizer):
    model = _peaky_model(tiny_tokenizer, 0)
    samples = generate_completions(model, tiny_tokenizer, [user_prompt("Hi")], n=8, max_new_tokens=3, seed=0)
    estimate = monte_carlo_kl(
        model, model, [samples.prompt_ids[0]] * 8, samples.completion_ids[0], tiny_tokenizer.pad_token_id
    )
    assert estimate.mean == pytest.approx(0.0, abs=1e-5) and estimate.n == 8


def test_kl_estimate_interval_is_the_normal_one():
    estimate = kl_estimate([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)  # sample standard deviation of 1..4
    assert estimate.mean == 2.5 and estimate.std == pytest.approx(sd)
    assert estimate.ci95 == pytest.approx(
        (2.5 - 1.959963984540054 * sd / 2, 2.5 + 1.959963984540054 * sd / 2)
    )
    with pytest.raises(ValueError, match="zero samples"):
        kl_estimate([])

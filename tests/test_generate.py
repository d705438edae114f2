"""Batched, seeded sampling that stops at EOS."""

from __future__ import annotations

import pytest
import torch

from preftune.data.schema import user_prompt
from preftune.generate import generate_completions, left_pad
from preftune.models.tiny import tiny_model, tiny_tokenizer

PROMPTS = [user_prompt("Hi"), user_prompt("Why is the sky blue?"), user_prompt("Explain magnets.")]


def test_seeded_distinct_and_reproducible(tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory()
    first = generate_completions(model, tiny_tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=3, batch_size=4)
    again = generate_completions(model, tiny_tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=3, batch_size=4)
    other = generate_completions(model, tiny_tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=4, batch_size=4)
    assert first.texts == again.texts and first.texts != other.texts
    assert [len(t) for t in first.texts] == [2, 2, 2]
    assert all(a != b for a, b in first.texts)  # two samples per prompt differ
    assert first.new_tokens == sum(len(c) for per in first.completion_ids for c in per) > 0


def test_stops_at_eos_and_cuts_padding():
    tok = tiny_tokenizer(pad_is_eos=True)
    model = tiny_model(tok, seed=1)
    # Make EOS likely: its (tied) output embedding is scaled up so it often wins the sample.
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.eos_token_id] = model.model.norm.weight * 50
    result = generate_completions(model, tok, PROMPTS, n=2, max_new_tokens=20, seed=0)
    for per_prompt in result.completion_ids:
        for completion in per_prompt:
            assert completion.count(tok.eos_token_id) <= 1
            if tok.eos_token_id in completion:
                assert completion[-1] == tok.eos_token_id
    assert any(len(c) < 20 for per in result.completion_ids for c in per)


def test_left_pad_mask_comes_from_lengths_even_when_pad_is_eos():
    ids, mask = left_pad([[5, 2], [7, 8, 2]], pad_id=2)
    assert ids.tolist() == [[2, 5, 2], [7, 8, 2]]
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1]]  # the real closing EOS stays unmasked


def test_rejects_bad_arguments(tiny_tokenizer, tiny_model_factory):
    with pytest.raises(ValueError, match="temperature"):
        generate_completions(tiny_model_factory(), tiny_tokenizer, PROMPTS, temperature=0)

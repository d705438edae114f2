"""sequence_logprobs against a hand computation (DESIGN.md section 6's definition)."""

from __future__ import annotations

import math

import torch

from preftune.models.logprobs import sequence_logprobs, token_logprobs


def test_sequence_logprobs_by_hand():
    # One row of 4 tokens over a vocabulary of 3; tokens 2 and 3 are the completion.
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [2.0, 0.0, 1.0], [9.0, 9.0, 9.0]]])
    input_ids = torch.tensor([[0, 1, 2, 0]])
    completion_mask = torch.tensor([[0, 0, 1, 1]])

    def log_softmax_at(row, index):
        return row[index] - math.log(sum(math.exp(v) for v in row))

    # Token t is scored by the logits at t-1: token 2 (id 2) by position 1, token 3 (id 0) by 2.
    expected = log_softmax_at([0.5, 0.5, 3.0], 2) + log_softmax_at([2.0, 0.0, 1.0], 0)
    logps, counts = sequence_logprobs(logits, input_ids, completion_mask)
    assert torch.allclose(logps, torch.tensor([expected]), atol=1e-6)
    assert counts.tolist() == [2.0]
    # The last position's logits predict nothing and never count, whatever they hold.
    assert token_logprobs(logits, input_ids).shape == (1, 3)


def test_matches_log_softmax_gather_on_random_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1]])
    reference = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    expected = (reference * mask[:, 1:]).sum(-1)
    logps, counts = sequence_logprobs(logits, ids, mask)
    assert torch.allclose(logps.double(), expected, atol=1e-10)
    assert counts.tolist() == [3.0, 6.0, 1.0]

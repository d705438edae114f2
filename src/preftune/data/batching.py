"""Collate tokenized pairs and sequences into tensors.

`padded` is the plain layout and the correctness reference: each pair becomes two right-padded
rows, [prompt + chosen] and [prompt + rejected], chosen rows first. Masks are built from lengths,
never from `input_ids == pad_id`: SmolLM2's pad token *is* its EOS, and comparing ids would mask
every response's closing EOS (a bug TRL shipped).

A faster layout (prefix-shared, packed) replaces `collate_pairs` here without touching the loops:
they only call `collate_pairs` and `models.logprobs.pair_logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenize import TokenizedPair


@dataclass
class SequenceBatch:
    """Right-padded rows; `completion_mask` marks the tokens whose log-probs count."""

    input_ids: torch.Tensor  # [N, T] long
    attention_mask: torch.Tensor  # [N, T] long, 1 on real tokens
    completion_mask: torch.Tensor  # [N, T] long, 1 on completion tokens
    num_tokens: int  # real (non-pad) tokens in the batch

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device), self.num_tokens
        )


@dataclass
class PairBatch:
    """B pairs as 2B rows: rows [0, B) are prompt+chosen, rows [B, 2B) are prompt+rejected."""

    sequences: SequenceBatch
    num_pairs: int
    margins: torch.Tensor | None  # [B] per-pair preference strength, when the data has one

    def to(self, device) -> PairBatch:
        margins = self.margins.to(device) if self.margins is not None else None
        return PairBatch(self.sequences.to(device), self.num_pairs, margins)


def collate_sequences(rows: list[tuple[list[int], list[int]]], pad_id: int) -> SequenceBatch:
    """(prompt_ids, completion_ids) rows -> right-padded tensors with masks from lengths."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, completion) in enumerate(rows):
        length = len(prompt) + len(completion)
        input_ids[i, :length] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :length] = 1
        completion_mask[i, len(prompt) : length] = 1
    return SequenceBatch(input_ids, attention_mask, completion_mask, int(attention_mask.sum()))


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> PairBatch:
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    margins = None
    if any(p.margin is not None for p in pairs):
        margins = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
    return PairBatch(collate_sequences(rows, pad_id), len(pairs), margins)

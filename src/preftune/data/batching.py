"""Collate tokenized pairs and sequences into tensors, in one of two layouts.

`padded` is the plain layout and the correctness reference: each pair becomes two right-padded
rows, [prompt + chosen] and [prompt + rejected], chosen rows first. Masks are built from lengths,
never from `input_ids == pad_id`: SmolLM2's pad token *is* its EOS, and comparing ids would mask
every response's closing EOS (a bug TRL shipped).

`fast` is prefix-shared and packed (`PackedSequences`):
- a pair is one block `[prompt, chosen, rejected]`: the prompt runs once, rejected tokens cannot
  see chosen tokens, and rejected's position ids continue from the end of the prompt, so every
  token sees exactly what it sees in its padded row (Wang et al. 2024, "Accelerating Direct
  Preference Optimization with Prefix Sharing");
- blocks are packed several to a row, up to a token budget, with a block-diagonal mask and
  position ids that restart in each block: no padding inside rows; rows of similar length go
  through the model together (`RowGroup`), so little padding at their ends either;
- every completion token records which position's output predicts it, so log-probs need the LM
  head only there (`models.logprobs.packed_logprobs`);
- each row also lists its *spans* (a prompt with its first completion; each later completion with
  its prompt as prefix), so under SDPA attention computes only the scores the 4-D mask keeps
  (`models.span_attention`); the mask stays for eager attention.

The loops call only `collate_pairs` and `models.logprobs.pair_logprobs`; `layout` picks the path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenize import TokenizedExample, TokenizedPair

BATCHING_LAYOUTS = ("fast", "padded")


@dataclass
class SequenceBatch:
    """Right-padded rows; `completion_mask` marks the tokens whose log-probs count."""

    input_ids: torch.Tensor  # [N, T] long
    attention_mask: torch.Tensor  # [N, T] long, 1 on real tokens
    completion_mask: torch.Tensor  # [N, T] long, 1 on completion tokens
    num_tokens: int  # real (non-pad) tokens in the batch

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.completion_mask.to(device),
            self.num_tokens,
        )


@dataclass
class RowGroup:
    """Rows of one width, run through the model in one call."""

    input_ids: torch.Tensor  # [R, T] long
    position_ids: torch.Tensor  # [R, T] long: each token's position in its own sequence
    attention_mask: torch.Tensor  # [R, 1, T, T] bool: True where a query (dim 2) may attend a key (dim 3)
    # The same visibility as runs of columns, per row: (query start, query end, prefix start, prefix
    # end); queries see the prefix fully and their own run causally (`models.span_attention`).
    spans: list[list[tuple[int, int, int, int]]]

    def to(self, device) -> RowGroup:
        return RowGroup(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.attention_mask.to(device),
            self.spans,
        )


@dataclass
class PackedSequences:
    """N sequences laid out prefix-shared and packed into rows (see the module docstring).

    Rows come in `groups` of equal width, one model call each: rows of similar length share a
    call, so short rows are not padded to the longest one. Index tensors address the outputs of
    all groups flattened and concatenated (group by group, `row * T + column` within a group).
    """

    groups: list[RowGroup]
    source_index: torch.Tensor  # [M] long: where the output that predicts each completion token is
    target_ids: torch.Tensor  # [M] long: the completion token predicted there
    sequence_index: torch.Tensor  # [M] long: which of the N sequences the token belongs to
    last_index: torch.Tensor  # [N] long: where each sequence's last token is (a reward is read there)
    num_sequences: int
    num_tokens: int  # tokens of the N sequences, each prompt counted once per sequence (as `padded` counts)
    computed_tokens: int  # tokens the model actually runs: each prompt once per block, no padding

    @property
    def device(self) -> torch.device:
        return self.target_ids.device

    @property
    def positions(self) -> int:
        """Positions the model computes, padding included."""
        return sum(group.input_ids.numel() for group in self.groups)

    def to(self, device) -> PackedSequences:
        moved = {name: getattr(self, name).to(device) for name in ("source_index", "target_ids", "sequence_index", "last_index")}
        return PackedSequences(
            groups=[group.to(device) for group in self.groups],
            **moved,
            num_sequences=self.num_sequences,
            num_tokens=self.num_tokens,
            computed_tokens=self.computed_tokens,
        )

    def completion_lengths(self) -> torch.Tensor:
        """[N] completion tokens per sequence (a first token at position 0 has no predictor and is not counted)."""
        counts = torch.zeros(self.num_sequences, dtype=torch.float32, device=self.device)
        ones = torch.ones_like(self.sequence_index, dtype=torch.float32)
        return counts.index_add_(0, self.sequence_index, ones)


@dataclass
class PairBatch:
    """B pairs. `sequences` is a `SequenceBatch` of 2B rows (rows [0, B) prompt+chosen, rows
    [B, 2B) prompt+rejected) or a `PackedSequences` of 2B sequences in the same order."""

    sequences: SequenceBatch | PackedSequences
    num_pairs: int
    margins: torch.Tensor | None  # [B] per-pair preference strength, when the data has one

    def to(self, device) -> PairBatch:
        margins = self.margins.to(device) if self.margins is not None else None
        return PairBatch(self.sequences.to(device), self.num_pairs, margins)


# ----------------------------------------------------------------------------- padded


def collate_sequences(
    rows: list[tuple[list[int], list[int]]], pad_id: int, layout: str = "padded", pack_length: int = 0
) -> SequenceBatch | PackedSequences:
    """(prompt_ids, completion_ids) rows -> right-padded tensors with masks from lengths, or
    (`layout="fast"`) packed rows of at most `pack_length` tokens (see `pack_blocks`)."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    _check_layout(layout)
    if layout == "fast":
        blocks = [_Block(list(p), [list(c)], [i]) for i, (p, c) in enumerate(rows)]
        return pack_blocks(blocks, len(rows), pad_id, pack_length)
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


def collate_pairs(
    pairs: list[TokenizedPair], pad_id: int, layout: str = "padded", pack_length: int = 0
) -> PairBatch:
    """B pairs -> a `PairBatch`: 2B padded rows, or (`layout="fast"`) B prefix-shared blocks
    packed into rows of at most `pack_length` tokens (see `pack_blocks`)."""
    if not pairs:
        raise ValueError("cannot collate an empty batch")
    _check_layout(layout)
    margins = None
    if any(p.margin is not None for p in pairs):
        margins = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
    if layout == "fast":
        b = len(pairs)
        blocks = [
            _Block(p.prompt_ids, [p.chosen_ids, p.rejected_ids], [i, b + i]) for i, p in enumerate(pairs)
        ]
        return PairBatch(pack_blocks(blocks, 2 * b, pad_id, pack_length), b, margins)
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    return PairBatch(collate_sequences(rows, pad_id), len(pairs), margins)


@dataclass
class UnpairedBatch:
    """B unpaired (KTO) examples: `sequences` holds prompt_i + completion_i; `kl_sequences` holds
    prompt_i + completion_j, j = `mismatched_partners(...)[i]`, for KTO's KL estimate."""

    sequences: SequenceBatch | PackedSequences
    kl_sequences: SequenceBatch | PackedSequences
    labels: torch.Tensor  # [B] bool, True: desirable

    def to(self, device) -> UnpairedBatch:
        return UnpairedBatch(self.sequences.to(device), self.kl_sequences.to(device), self.labels.to(device))


def mismatched_partners(prompts: list[list[int]]) -> list[int]:
    """For each example i, whose completion goes with prompt i in KTO's KL estimate: the nearest
    example before it (cyclically) with a different prompt, so i-1 when prompts differ, as TRL
    pairs x_i with y_{i-1} of its batch (Ethayarajh et al. 2024, section 4). Skipping equal prompts
    keeps a pair's own two answers (an unpaired pair, or a repeat at an epoch's edge) from posing
    as a mismatched pair; a batch of one prompt has no mismatched pair and keeps i-1 regardless."""
    size = len(prompts)
    partners = []
    for i in range(size):
        steps = (s for s in range(1, size) if prompts[(i - s) % size] != prompts[i])
        partners.append((i - next(steps, 1)) % size)
    return partners


def collate_unpaired(
    examples: list[TokenizedExample], pad_id: int, max_length: int, layout: str = "padded", pack_length: int = 0
) -> UnpairedBatch:
    """B examples -> an `UnpairedBatch`. A mismatched completion longer than what `max_length`
    leaves after its new prompt is cut at its end (TRL truncates the KL sequence the same way)."""
    if len(examples) < 2:
        raise ValueError(f"KTO's KL estimate needs at least 2 examples per batch, got {len(examples)}")
    partners = mismatched_partners([e.prompt_ids for e in examples])
    rows = [(e.prompt_ids, e.completion_ids) for e in examples]
    kl_rows = [(e.prompt_ids, examples[j].completion_ids[: max(1, max_length - len(e.prompt_ids))])
               for e, j in zip(examples, partners, strict=True)]  # fmt: skip
    labels = torch.tensor([e.label for e in examples], dtype=torch.bool)
    return UnpairedBatch(collate_sequences(rows, pad_id, layout, pack_length),
                         collate_sequences(kl_rows, pad_id, layout, pack_length), labels)  # fmt: skip


def _check_layout(layout: str) -> None:
    if layout not in BATCHING_LAYOUTS:
        raise ValueError(f"batching layout must be one of {', '.join(BATCHING_LAYOUTS)}, got {layout!r}")


# ----------------------------------------------------------------------------- prefix-shared, packed


@dataclass
class _Block:
    """One prompt and the completions that follow it. Each completion sees the prompt and itself,
    never another completion; `sequence_ids` numbers the sequences prompt + completion_k."""

    prompt: list[int]
    completions: list[list[int]]
    sequence_ids: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(c) for c in self.completions)


def plan_rows(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Group blocks into rows of at most `pack_length` tokens: first-fit decreasing.

    A block longer than `pack_length` gets a row of its own (blocks are never split: their
    tokens attend to each other). Returns block indices per row; rows are in first-fit order.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        for r, free in enumerate(room):
            if length <= free:
                rows[r].append(index)
                room[r] -= length
                break
        else:
            rows.append([index])
            room.append(pack_length - length)
    return rows


# A row joins a group only if it is at least this full at the group's width: at most 15% padding.
GROUP_FILL = 0.85
# Under FSDP every rank must make the same model calls (each call all-gathers the shards), but the
# number of groups depends on the lengths in each rank's batch: a rank with two groups waits in a
# collective the other never joins (a hang, or gloo's "collective mismatch" abort).
# `train.distributed.wrap_model` sets this there, and every batch then goes through as one group.
SINGLE_GROUP = False


def plan_groups(row_lengths: list[int], fill: float = GROUP_FILL) -> list[list[int]]:
    """Rows (indices) grouped by length, longest first: a row starts a new group when padding it to
    the current group's width would waste more than 1 - `fill` of it."""
    groups: list[list[int]] = []
    width = 0
    for row in sorted(range(len(row_lengths)), key=lambda r: -row_lengths[r]):
        if not groups or row_lengths[row] < fill * width:
            groups.append([])
            width = row_lengths[row]
        groups[-1].append(row)
    return groups


def pack_blocks(
    blocks: list[_Block], num_sequences: int, pad_id: int, pack_length: int = 0
) -> PackedSequences:
    """Lay `blocks` out in rows of at most `pack_length` tokens (0: the longest block's length;
    1: one block per row, i.e. prefix sharing without packing), rows grouped by length.

    Within a group, rows shorter than the group's width end in padding that attends only to
    itself (a query with nothing to attend to would give NaN, and NaN * 0 is still NaN in the
    backward pass).
    """
    lengths = [len(b) for b in blocks]
    budget = pack_length if pack_length > 0 else max(lengths)
    rows = plan_rows(lengths, budget)
    row_lengths = [sum(lengths[i] for i in row) for row in rows]
    source, target, sequence = [], [], []
    last_index = [0] * num_sequences
    groups = []
    base = 0  # flat index of the current group's first position
    for members in plan_groups(row_lengths, fill=0.0 if SINGLE_GROUP else GROUP_FILL):
        width = row_lengths[members[0]]
        group_rows = [rows[r] for r in members]
        input_ids = torch.full((len(group_rows), width), pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(group_rows), width), dtype=torch.long)
        # Per column: which block it belongs to (pads get their own negative ids, so they only see
        # themselves) and which branch: 0 for the prompt, k for the k-th completion.
        block_of = -1 - torch.arange(width).repeat(len(group_rows), 1)
        branch_of = torch.zeros((len(group_rows), width), dtype=torch.long)
        spans: list[list[tuple[int, int, int, int]]] = []
        for r, row in enumerate(group_rows):
            offset = 0
            spans.append([])
            for index in row:
                block = blocks[index]
                p = len(block.prompt)
                ids, positions, branches = list(block.prompt), list(range(p)), [0] * p
                row_start = base + r * width
                prompt_end = row_start + offset + p - 1  # flat index of the last prompt token
                for k, (completion, seq) in enumerate(zip(block.completions, block.sequence_ids, strict=True), 1):
                    start = row_start + offset + len(ids)  # flat index of this completion's first token
                    # Token j of the completion is predicted by the token before it: for j == 0
                    # that is the prompt's last token, shared by all branches.
                    for j, token in enumerate(completion):
                        if j == 0 and p == 0:
                            continue  # nothing precedes it: `padded` skips it too (logits[:, :-1])
                        source.append(prompt_end if j == 0 else start + j - 1)
                        target.append(token)
                        sequence.append(seq)
                    last_index[seq] = start + len(completion) - 1 if completion else prompt_end
                    column = offset + len(ids)  # this completion's first column in the row
                    if k == 1:  # the prompt and the first completion: one causal run
                        spans[r].append((offset, column + len(completion), 0, 0))
                    elif completion:  # a later one sees the prompt, then itself
                        spans[r].append((column, column + len(completion), offset, offset + p))
                    ids += completion
                    positions += range(p, p + len(completion))
                    branches += [k] * len(completion)
                end = offset + len(ids)
                input_ids[r, offset:end] = torch.tensor(ids, dtype=torch.long)
                position_ids[r, offset:end] = torch.tensor(positions, dtype=torch.long)
                block_of[r, offset:end] = index
                branch_of[r, offset:end] = torch.tensor(branches, dtype=torch.long)
                offset = end
        # query q may attend key k iff same block, k not after q, and k is prompt or q's own branch.
        same_block = block_of[:, :, None] == block_of[:, None, :]
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        visible_branch = (branch_of[:, None, :] == 0) | (branch_of[:, :, None] == branch_of[:, None, :])
        mask = (same_block & causal & visible_branch).unsqueeze(1)
        groups.append(RowGroup(input_ids, position_ids, mask, spans))
        base += input_ids.numel()

    counted = sum(len(b.prompt) * len(b.completions) + sum(len(c) for c in b.completions) for b in blocks)
    return PackedSequences(
        groups=groups,
        source_index=torch.tensor(source, dtype=torch.long),
        target_ids=torch.tensor(target, dtype=torch.long),
        sequence_index=torch.tensor(sequence, dtype=torch.long),
        last_index=torch.tensor(last_index, dtype=torch.long),
        num_sequences=num_sequences,
        num_tokens=counted,
        computed_tokens=sum(lengths),
    )

"""Pair layouts: padded rows from lengths, and prefix-shared packed rows whose masks, positions and
gather indices let every completion token see exactly its own sequence's prefix."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from preftune.data.batching import PackedSequences, collate_pairs, collate_sequences, plan_groups, plan_rows
from preftune.data.tokenize import TokenizedPair

PAD = 0  # also the EOS below, as in SmolLM2: masks must not come from ids


def pair(prompt, chosen, rejected, margin=None):
    return TokenizedPair(list(prompt), list(chosen), list(rejected), margin=margin)


PAIRS = [
    pair([1, 5, 6, 7], [8, 9, PAD], [10, PAD]),
    pair([1, 11], [12, 13, 14, 15, PAD], [PAD]),  # a rejected response that is only its EOS
    pair([1, 20, 21, 22, 23, 24], [30, 31], [32, 33, 34]),  # truncated: no EOS
]


def sequences_of(pairs):
    """The 2B sequences (prompt, completion) in PairBatch order: chosen first."""
    return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]


def visible_prefix(packed: PackedSequences, flat_index: int) -> tuple[list[int], list[int]]:
    """Tokens and position ids a query at `flat_index` attends to, in column order."""
    for group in packed.groups:  # flat indices run through the groups one after another
        if flat_index < group.input_ids.numel():
            break
        flat_index -= group.input_ids.numel()
    row, column = divmod(flat_index, group.input_ids.shape[1])
    keys = group.attention_mask[row, 0, column].nonzero().squeeze(1)
    return group.input_ids[row, keys].tolist(), group.position_ids[row, keys].tolist()


def shapes(packed: PackedSequences) -> list[tuple[int, int]]:
    return [tuple(group.input_ids.shape) for group in packed.groups]


def assert_sees_exactly_its_prefix(packed: PackedSequences, sequences):
    """The invariant that makes the layouts agree: the position predicting token j of a sequence
    attends to exactly tokens 0..j-1 of that sequence, at positions 0..j-1."""
    expected = []
    for n, (prompt, completion) in enumerate(sequences):
        full = prompt + completion
        expected += [(n, j) for j in range(max(len(prompt), 1), len(full))]
    got = list(
        zip(
            packed.sequence_index.tolist(),
            packed.source_index.tolist(),
            packed.target_ids.tolist(),
            strict=True,
        )
    )
    assert sorted((n for n, _, _ in got)) == sorted(n for n, _ in expected)
    seen = {n: 0 for n in range(len(sequences))}
    for n, source, target in got:
        prompt, completion = sequences[n]
        full = prompt + completion
        j = max(len(prompt), 1) + seen[n]  # tokens of one sequence come in order
        seen[n] += 1
        tokens, positions = visible_prefix(packed, source)
        assert tokens == full[:j] and positions == list(range(j)), (n, j)
        assert target == full[j]
    for n, (prompt, completion) in enumerate(sequences):  # the last token: where a reward is read
        full = prompt + completion
        tokens, positions = visible_prefix(packed, int(packed.last_index[n]))
        assert tokens == full and positions == list(range(len(full)))


def test_padded_masks_come_from_lengths_not_ids():
    batch = collate_pairs(PAIRS, PAD)
    seqs = batch.sequences
    assert batch.num_pairs == 3 and seqs.input_ids.shape == (6, 9)  # widest: 6 + 3 (pair 3, rejected)
    # Row 0: prompt 4 + chosen 3, whose last token is PAD-valued EOS and still counts.
    assert seqs.attention_mask[0].tolist() == [1] * 7 + [0, 0]
    assert seqs.completion_mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert seqs.completion_mask[4].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]  # rejected of pair 2: its EOS only
    assert seqs.num_tokens == sum(len(p) + len(c) for p, c in sequences_of(PAIRS))


@pytest.mark.parametrize("pack_length", [0, 1, 12, 1000])
def test_fast_layout_shows_each_token_its_own_prefix(pack_length):
    batch = collate_pairs(PAIRS, PAD, layout="fast", pack_length=pack_length)
    assert isinstance(batch.sequences, PackedSequences) and batch.num_pairs == 3
    assert_sees_exactly_its_prefix(batch.sequences, sequences_of(PAIRS))


def test_fast_layout_shares_the_prompt_and_counts_tokens_like_padded():
    batch = collate_pairs(PAIRS, PAD, layout="fast", pack_length=1)  # one pair per row
    packed = batch.sequences
    # Blocks of 11, 9 and 8 tokens, one per row; the 9 and 8 share a call (8 fills 89% of 9), the 11
    # goes alone (9 would fill only 82% of it).
    assert shapes(packed) == [(1, 11), (2, 9)]
    # Pair 0 is [prompt, chosen, rejected]; rejected's positions continue from the prompt's end.
    group = packed.groups[1]
    assert group.input_ids[0].tolist() == [1, 5, 6, 7, 8, 9, PAD, 10, PAD]
    assert group.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5]
    mask = group.attention_mask[0, 0]
    assert not mask[7, 4:7].any() and mask[7, :4].all()  # rejected sees the prompt, not chosen
    assert not mask[4:7, 7:9].any()  # and chosen never sees rejected
    assert packed.num_tokens == collate_pairs(PAIRS, PAD).sequences.num_tokens
    assert packed.computed_tokens == sum(
        len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in PAIRS
    )
    assert packed.completion_lengths().tolist() == [3, 5, 2, 2, 1, 3]


def test_packing_is_block_diagonal():
    packed = collate_pairs(PAIRS, PAD, layout="fast", pack_length=30).sequences
    assert shapes(packed) == [(1, 28)]  # blocks of 9, 8 and 11 tokens share one row, no padding
    assert packed.computed_tokens == packed.positions == 28
    mask = packed.groups[0].attention_mask[0, 0]
    # Position ids restart at 0 at every block start, and nothing attends across a block start.
    starts = (packed.groups[0].position_ids[0] == 0).nonzero().squeeze(1).tolist()
    assert starts == [0, 11, 20]  # first-fit decreasing: 11, then 9, then 8
    for start in starts[1:]:
        assert not mask[start:, :start].any()


def test_padding_attends_only_to_itself():
    packed = collate_pairs(PAIRS, PAD, layout="fast", pack_length=12).sequences
    assert shapes(packed) == [(1, 11), (2, 9)]  # 9 + 8 > 12: no two blocks share a row
    for group in packed.groups:  # every query attends to something: no NaN rows in softmax
        assert bool(group.attention_mask.any(-1).all())
    # The 8-token row ends in one pad, which sees only itself and is seen by nobody.
    mask = packed.groups[1].attention_mask[1, 0]
    assert packed.groups[1].input_ids[1, :2].tolist() == [1, 11]  # pair 1's block: 2 + 5 + 1 tokens
    assert mask[8].nonzero().squeeze(1).tolist() == [8]
    assert not mask[:8, 8].any()
    assert packed.positions == 11 + 2 * 9


def test_plan_groups_bounds_padding():
    assert plan_groups([100, 90, 85, 84, 50, 46, 10]) == [[0, 1, 2], [3], [4, 5], [6]]
    assert plan_groups([7, 7, 7]) == [[0, 1, 2]]
    assert plan_groups([5, 9], fill=0.5) == [[1, 0]]


def test_plan_rows_first_fit_decreasing():
    assert plan_rows([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    assert plan_rows([10, 2], 4) == [[0], [1]]  # a block longer than the budget rides alone
    assert plan_rows([1, 1, 1], 1) == [[0], [1], [2]]


def test_collate_sequences_fast_has_no_sharing_but_same_prefixes():
    rows = [([1, 2, 3], [4, 5]), ([1], [6, 7, 8, 9]), ([1, 2], [])]
    packed = collate_sequences(rows, PAD, layout="fast", pack_length=100)
    assert shapes(packed) == [(1, 12)]  # no prompt shared: 5 + 5 + 2
    assert_sees_exactly_its_prefix(packed, rows)
    assert packed.num_tokens == collate_sequences(rows, PAD).num_tokens == packed.computed_tokens


def test_margins_and_device_move():
    pairs = [pair([1, 2], [3], [4], margin=0.5), pair([1, 2], [3], [4])]
    for layout in ("padded", "fast"):
        batch = collate_pairs(pairs, PAD, layout=layout).to("cpu")
        assert batch.margins.tolist() == [0.5, 0.0]


def test_bad_layout_and_empty_batch():
    with pytest.raises(ValueError, match="batching layout must be one of fast, padded, got 'packed'"):
        collate_pairs(PAIRS, PAD, layout="packed")
    with pytest.raises(ValueError, match="empty batch"):
        collate_pairs([], PAD, layout="fast")


token_lists = st.lists(st.integers(1, 50), min_size=0, max_size=7)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(1, 50), min_size=1, max_size=6), token_lists, token_lists),
        min_size=1,
        max_size=5,
    ),
    st.integers(0, 25),
)
def test_any_pairs_any_budget_keep_every_prefix(raw_pairs, pack_length):
    pairs = [pair(p, c, r) for p, c, r in raw_pairs]
    packed = collate_pairs(pairs, PAD, layout="fast", pack_length=pack_length).sequences
    assert_sees_exactly_its_prefix(packed, sequences_of(pairs))
    assert packed.num_tokens == collate_pairs(pairs, PAD).sequences.num_tokens
    assert torch.equal(
        packed.completion_lengths(),
        collate_pairs(pairs, PAD).sequences.completion_mask[:, 1:].sum(-1).float(),
    )

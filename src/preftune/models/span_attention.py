"""Attention over the spans of a prefix-shared, packed row, computing only the scores it keeps.

A packed row (`data.batching.pack_blocks`) holds blocks `[prompt, chosen, rejected]` side by side.
Its 4-D mask lets each query see only its own block's prompt and its own branch, but an SDPA call
with that mask still computes every query against every key of the row: for a row of two blocks
of 700 tokens, 4x the scores a block needs, all of them masked out but for a quarter. Attention was
a fifth to a quarter of a SmolLM2 training step on such rows.

Here each row is cut into *spans* (`RowGroup.spans`): a run of queries that attend, causally, to
themselves, and fully to a run of earlier keys (the prompt they continue). A block becomes two
spans, `[prompt + chosen]` (no prefix, plain causal: the fused kernels skip the upper triangle)
and `[rejected]` with `prompt` as its prefix. Each span is one SDPA call on its own slice, so only
the scores the mask keeps are computed; padding at a row's end gets zeros, as nothing reads it.

How it is wired: transformers looks up `ALL_ATTENTION_FUNCTIONS["sdpa"]` on every forward and
passes the model call's extra keyword arguments down to it. `install()` registers a wrapper under
that name which takes the span path only when the call carries `preftune_spans`, and otherwise
calls transformers' own SDPA function unchanged. Activation checkpointing replays the same
arguments, so the recomputed forward takes the same path.

Each span's attention runs in one of two kernels (`KERNEL`): PyTorch's fused SDPA (on CPU, its
flash kernel), or plain matmul-softmax (scores = q k^T, softmax in fp32, @ v): the same numbers to
rounding, and in bf16 on CPU the plain matmuls go to oneDNN's bf16 GEMMs, which an earlier profile
found 1.5x faster than the flash kernel at 400-token spans, at the cost of keeping each span's
[heads, n, n] attention weights for the backward pass. `bench/compile_step.py` measures both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The keyword the packed trunk call passes (a list, per row, of `Span`s); see `models.logprobs`.
SPANS_KWARG = "preftune_spans"

# (query start, query end, prefix start, prefix end) in row columns: queries [qs, qe) see keys
# [ps, pe) fully and keys [qs, qe) causally.
Span = tuple[int, int, int, int]

# "sdpa" or "matmul" (see the module note); read on every call.
KERNEL = "sdpa"

_installed = False


def install() -> None:
    """Register the span-aware SDPA wrapper (idempotent)."""
    global _installed
    if _installed:
        return
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def sdpa_or_spans(module, query, key, value, attention_mask, *args, **kwargs):
        spans = kwargs.pop(SPANS_KWARG, None)
        if spans is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
        return span_attention_forward(module, query, key, value, spans, **kwargs)

    ALL_ATTENTION_FUNCTIONS.register("sdpa", sdpa_or_spans)
    _installed = True


def span_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    spans: list[list[Span]],
    dropout: float = 0.0,
    scaling: float | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """query [R, H, T, D], key/value [R, Hkv, T, D] -> ([R, T, H, D], None), transformers' contract."""
    if len(spans) != query.shape[0]:
        raise ValueError(f"{len(spans)} rows of spans for a batch of {query.shape[0]} rows")
    rows, heads, width, head_dim = query.shape
    options = {"dropout_p": dropout if module.training else 0.0, "scale": scaling}
    if key.shape[1] != heads:  # grouped-query attention, without copying the key/value heads
        options["enable_gqa"] = True
    # Inputs are cut with `split`, never sliced piece by piece: the backward of one split is one
    # concatenation, where every slice would add a zero-filled gradient of the whole tensor.
    # Outputs are laid out [1, n, H, D] (SDPA's output transposed: a free view on CPU), and all
    # rows' pieces are joined in one copy, straight into the [R, T, H, D] layout transformers expects.
    pieces = []
    for r, (q, k, v) in enumerate(zip(query.split(1), key.split(1), value.split(1), strict=True)):
        row_spans = spans[r]
        ends = [qe for _, qe, _, _ in row_spans]
        if [qs for qs, _, _, _ in row_spans] != [0, *ends[:-1]]:
            raise ValueError(
                f"the spans of row {r} do not cover its columns from 0 without gaps: {row_spans}"
            )
        queries = q.split(_lengths([0, *ends, width]), dim=2)
        cuts = sorted({0, width, *(c for span in row_spans for c in span if 0 < c < width)})
        key_parts, value_parts = k.split(_lengths(cuts), dim=2), v.split(_lengths(cuts), dim=2)

        for (qs, qe, ps, pe), q_span in zip(row_spans, queries, strict=False):
            if qe == qs:
                continue
            if pe > ps:
                n, prefix = qe - qs, pe - ps
                visible = torch.ones((n, prefix + n), dtype=torch.bool, device=q.device)
                visible[:, prefix:].tril_()
                keys = torch.cat(
                    [_columns(key_parts, cuts, ps, pe), _columns(key_parts, cuts, qs, qe)], dim=2
                )
                values = torch.cat(
                    [_columns(value_parts, cuts, ps, pe), _columns(value_parts, cuts, qs, qe)], dim=2
                )
                out = _attend(q_span, keys, values, visible, options)
            else:
                keys, values = _columns(key_parts, cuts, qs, qe), _columns(value_parts, cuts, qs, qe)
                out = _attend(q_span, keys, values, None, options)
            pieces.append(out.transpose(1, 2))
        if ends[-1] < width:  # padding at the row's end: nothing reads it
            pieces.append(query.new_zeros(1, width - ends[-1], heads, head_dim))
    joined = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
    return joined.reshape(rows, width, heads, head_dim), None  # no copy after `cat`


def _attend(q, k, v, visible: torch.Tensor | None, options: dict) -> torch.Tensor:
    """Attention of one span: q [1, H, n, D] over k/v [1, Hkv, m, D], `visible` [n, m] (None:
    causal, m == n) -> [1, H, n, D], in the kernel `KERNEL` names."""
    if KERNEL == "sdpa":
        if visible is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **options)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, **options)
    if KERNEL != "matmul":
        raise ValueError(f"span attention kernel must be sdpa or matmul, got {KERNEL!r}")
    _, heads, n, head_dim = q.shape
    kv_heads, m = k.shape[1], k.shape[2]
    group = heads // kv_heads  # query heads per key/value head, consecutive as SDPA's enable_gqa pairs them
    scale = options["scale"] if options["scale"] is not None else head_dim**-0.5
    if visible is None:
        visible = torch.ones((n, m), dtype=torch.bool, device=q.device).tril_()
    # One batched matmul per key/value head over all its query heads: [1, Hkv, G*n, D] @ [1, Hkv, D, m].
    scores = (q * scale).reshape(1, kv_heads, group * n, head_dim) @ k.transpose(-1, -2)
    scores = scores.view(1, kv_heads, group, n, m).masked_fill(~visible, float("-inf"))
    # Softmax in at least fp32 (SDPA's accumulation), back to the value dtype for the second matmul.
    weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(v.dtype)
    if options["dropout_p"] > 0:
        weights = F.dropout(weights, options["dropout_p"])
    out = weights.view(1, kv_heads, group * n, m) @ v
    return out.view(1, heads, n, head_dim)


def _columns(parts: tuple[torch.Tensor, ...], cuts: list[int], start: int, end: int) -> torch.Tensor:
    """Columns [start, end) of a row cut at `cuts` into `parts`, joined (a copy only if several)."""
    chosen = parts[cuts.index(start) : cuts.index(end)]
    return chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=2)


def _lengths(cuts: list[int]) -> list[int]:
    return [b - a for a, b in zip(cuts, cuts[1:], strict=False)]

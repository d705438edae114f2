"""Span attention (`models.span_attention`) against SDPA with the packed rows' 4-D mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from preftune.data.batching import _Block, pack_blocks
from preftune.models import logprobs, span_attention
from preftune.models.checkpointing import enable_activation_checkpointing
from preftune.models.tiny import tiny_model


class _Attention(torch.nn.Module):  # what transformers hands the attention function as `module`
    def __init__(self, training: bool = True):
        super().__init__()
        self.train(training)


def _blocks() -> list[_Block]:
    """Multi-completion blocks, an empty prompt, an empty completion, blocks of different sizes."""
    return [
        _Block([1, 2, 3, 4, 5], [[6, 7, 8], [9, 10]], [0, 5]),
        _Block([], [[11, 12], [13, 14, 15]], [1, 6]),
        _Block([16, 17], [[18], []], [2, 7]),
        _Block([19] * 9, [[20] * 4, [21] * 6], [3, 8]),
        _Block([22], [[23], [24, 25]], [4, 9]),
    ]


@pytest.mark.parametrize("kernel", ["sdpa", "matmul"])
@pytest.mark.parametrize("pack_length", [1, 0, 4096])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_values_and_gradients_equal_sdpa_with_the_mask(pack_length, kv_heads, kernel, monkeypatch):
    monkeypatch.setattr(span_attention, "KERNEL", kernel)
    packed = pack_blocks(_blocks(), 10, pad_id=0, pack_length=pack_length)
    torch.manual_seed(0)
    for group in packed.groups:
        rows, width = group.input_ids.shape
        q = torch.randn(rows, 4, width, 8, dtype=torch.float64, requires_grad=True)
        k = torch.randn(rows, kv_heads, width, 8, dtype=torch.float64, requires_grad=True)
        v = torch.randn(rows, kv_heads, width, 8, dtype=torch.float64, requires_grad=True)
        ours, _ = span_attention.span_attention_forward(_Attention(), q, k, v, group.spans, scaling=0.3)
        repeat = 4 // kv_heads
        expected = F.scaled_dot_product_attention(
            q,
            k.repeat_interleave(repeat, 1),
            v.repeat_interleave(repeat, 1),
            attn_mask=group.attention_mask,
            scale=0.3,
        ).transpose(1, 2)
        real = torch.zeros(
            rows, width, dtype=torch.bool
        )  # padding columns: the mask path gives them self-attention
        for r, row_spans in enumerate(group.spans):
            real[r, : row_spans[-1][1]] = True
        assert ours.shape == expected.shape == (rows, width, 4, 8)
        torch.testing.assert_close(ours[real], expected[real], rtol=1e-10, atol=1e-10)
        assert not ours[~real].any()
        weights = torch.randn(expected.shape, dtype=torch.float64) * real[:, :, None, None]
        grads = torch.autograd.grad((ours * weights).sum(), (q, k, v))
        expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_matmul_kernel_under_bf16_autocast_stays_close_to_sdpa(monkeypatch):
    """The bf16 case the matmul kernel is for: within bf16 rounding of SDPA, gradients too."""
    packed = pack_blocks(_blocks(), 10, pad_id=0, pack_length=0)
    group = packed.groups[0]
    rows, width = group.input_ids.shape
    torch.manual_seed(0)
    inputs = [torch.randn(rows, h, width, 16, requires_grad=True) for h in (4, 2, 2)]
    results = {}
    for kernel in ("sdpa", "matmul"):
        monkeypatch.setattr(span_attention, "KERNEL", kernel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = (x.to(torch.bfloat16) for x in inputs)
            out, _ = span_attention.span_attention_forward(_Attention(), q, k, v, group.spans)
        assert out.dtype == torch.bfloat16
        results[kernel] = (out.float(), torch.autograd.grad(out.float().sum(), inputs))
    torch.testing.assert_close(results["matmul"][0], results["sdpa"][0], rtol=0.02, atol=0.02)
    for got, want in zip(results["matmul"][1], results["sdpa"][1], strict=True):
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    monkeypatch.setattr(span_attention, "KERNEL", "flash")
    with pytest.raises(ValueError, match="kernel must be sdpa or matmul"):
        span_attention.span_attention_forward(_Attention(), *(x.detach() for x in inputs), group.spans)


def test_spans_must_cover_the_row_without_gaps():
    q = torch.zeros(1, 2, 6, 4)
    with pytest.raises(ValueError, match="without gaps"):
        span_attention.span_attention_forward(_Attention(), q, q, q, [[(0, 2, 0, 0), (3, 5, 0, 2)]])
    with pytest.raises(ValueError, match="rows of spans"):
        span_attention.span_attention_forward(_Attention(), q, q, q, [])


def test_sdpa_models_take_the_span_path_and_eager_ones_the_mask(monkeypatch):
    calls = []
    original = span_attention.span_attention_forward
    monkeypatch.setattr(
        span_attention, "span_attention_forward", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    packed = pack_blocks(_blocks(), 10, pad_id=0, pack_length=0)
    torch.manual_seed(0)
    sdpa = tiny_model()
    eager = tiny_model()
    eager.load_state_dict(sdpa.state_dict())
    eager.config._attn_implementation = "eager"
    fast, _ = logprobs.packed_logprobs(sdpa, packed)
    assert len(calls) == len(packed.groups) * sdpa.config.num_hidden_layers
    calls.clear()
    masked, _ = logprobs.packed_logprobs(eager, packed)
    assert not calls
    torch.testing.assert_close(fast, masked, rtol=1e-5, atol=1e-4)
    # Outside a packed call the wrapper is transformers' own SDPA: a plain forward is unchanged.
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(sdpa(input_ids=ids).logits, eager(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert not calls


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_replays_the_spans(mode):
    """The recomputed forward must take the span path too, or its gradients would drift."""
    packed = pack_blocks(_blocks(), 10, pad_id=0, pack_length=0)
    torch.manual_seed(0)
    plain = tiny_model()
    checkpointed = tiny_model()
    checkpointed.load_state_dict(plain.state_dict())
    plain.train()
    checkpointed.train()
    enable_activation_checkpointing(checkpointed, mode)
    grads = []
    for model in (plain, checkpointed):
        logps, _ = logprobs.packed_logprobs(model, packed)
        logps.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)

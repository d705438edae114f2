"""A decode-only forward for Llama-family models over a slot KV cache: the engine's fast path.

Why not the model's own forward: continuous batching needs every row at its own position, a KV
cache laid out by slot that rows enter and leave, and logits for the last position only. Here the
same weights are read once into a packed form and run through a handful of large matmuls per layer:
- q, k and v are one matmul (their weights stacked), and so are the MLP's gate and up projections;
- the KV cache is preallocated, [slots, kv_heads, max_len, head_dim] per layer, and each step
  writes one column per row at that row's own position;
- grouped-query attention runs without copying k/v: a kv head's `groups` query heads are treated
  as `groups` query rows of one head (exact for a single decode position);
- the residual stream stays fp32 and the matmul operands use `dtype` (bf16 where the CPU has bf16
  units), like the trainer's autocast;
- the LM head runs on one position per row.

The arithmetic is the model's own (HF `LlamaDecoderLayer`: pre-norm RMSNorm, RoPE, SDPA, SwiGLU),
so in fp32 the log-probs agree with a teacher-forced forward to about 1e-5; tests check it
(`tests/rollout/test_engine.py`). `is_supported` says which models take this path; the engine
falls back to transformers' `generate` for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .weights import base_model, effective_weight


def is_supported(model) -> bool:
    """A Llama-architecture causal LM (SmolLM2, Llama, the tiny test models), peft-wrapped or not."""
    base = base_model(model)
    config = getattr(base, "config", None)
    return (
        config is not None
        and config.model_type == "llama"
        and getattr(config, "hidden_act", "silu") == "silu"
        and not getattr(config, "pretraining_tp", 1) > 1
        and hasattr(base, "model")
        and hasattr(base.model, "rotary_emb")
    )


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [H] fp32
    qkv: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, H]
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # [H, heads * head_dim]
    out_bias: torch.Tensor | None
    post_norm: torch.Tensor  # [H] fp32
    gate_up: torch.Tensor  # [2 * I, H]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor  # [H, I]
    down_bias: torch.Tensor | None


class LlamaDecoder:
    """Packed weights plus the prefill and decode passes. `load(model)` refreshes the weights."""

    def __init__(self, model, dtype: torch.dtype):
        base = base_model(model)
        config = base.config
        self.dtype = dtype
        self.device = next(base.parameters()).device
        # On CPU the cache stays fp32 even when the matmuls run in bf16: decode attention is a
        # batch of tiny matmuls bound by reading the cache, and CPU kernels run those far slower
        # in bf16 than in fp32 (12 ms against 1.5 ms per layer at 128 rows, measured here).
        self.cache_dtype = torch.float32 if self.device.type == "cpu" else dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads
        self.eps = config.rms_norm_eps
        self.num_layers = config.num_hidden_layers
        self.rotary = base.model.rotary_emb
        self.vocab_size = config.vocab_size
        self.load(model)

    @torch.no_grad()
    def load(self, model) -> None:
        """Copy the model's current weights in (LoRA adapters merged, unless they are disabled)."""
        base = base_model(model)
        cast = lambda t: t.detach().to(self.device, self.dtype).contiguous()  # noqa: E731
        self.embed = base.model.embed_tokens.weight.detach().to(self.device, torch.float32)
        self.final_norm = base.model.norm.weight.detach().float()
        lm_head, lm_head_bias = effective_weight(base.lm_head)
        self.lm_head = cast(lm_head)
        self.lm_head_bias = None if lm_head_bias is None else cast(lm_head_bias)
        self.layers = []
        for block in base.model.layers:
            attention, mlp = block.self_attn, block.mlp
            q, q_bias = effective_weight(attention.q_proj)
            k, k_bias = effective_weight(attention.k_proj)
            v, v_bias = effective_weight(attention.v_proj)
            o, o_bias = effective_weight(attention.o_proj)
            gate, gate_bias = effective_weight(mlp.gate_proj)
            up, up_bias = effective_weight(mlp.up_proj)
            down, down_bias = effective_weight(mlp.down_proj)
            self.layers.append(
                LayerWeights(
                    input_norm=block.input_layernorm.weight.detach().float(),
                    qkv=cast(torch.cat([q, k, v])),
                    qkv_bias=_cat_bias([q_bias, k_bias, v_bias], [q, k, v], cast),
                    out=cast(o),
                    out_bias=None if o_bias is None else cast(o_bias),
                    post_norm=block.post_attention_layernorm.weight.detach().float(),
                    gate_up=cast(torch.cat([gate, up])),
                    gate_up_bias=_cat_bias([gate_bias, up_bias], [gate, up], cast),
                    down=cast(down),
                    down_bias=None if down_bias is None else cast(down_bias),
                )
            )

    # ---- cache --------------------------------------------------------------------------------

    def new_cache(self, slots: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (slots, self.kv_heads, max_len, self.head_dim)
        return [
            (torch.zeros(shape, dtype=self.cache_dtype, device=self.device),
             torch.zeros(shape, dtype=self.cache_dtype, device=self.device))
            for _ in range(self.num_layers)
        ]  # fmt: skip

    def rope_table(self, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [max_len, head_dim] fp32 from the model's own rotary module (its scaling type)."""
        positions = torch.arange(max_len, device=self.device)[None]
        probe = torch.empty(1, dtype=torch.float32, device=self.device)
        cos, sin = self.rotary(probe, positions)
        return cos[0].float(), sin[0].float()

    # ---- passes -------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(
        self, ids: torch.Tensor, lengths: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Right-padded prompts ids [G, L], lengths [G] -> (last-position logits [G, V],
        per-layer (k, v) [G, kv_heads, L, head_dim]). Right padding lets a plain causal mask
        serve: no real query attends to a padded key."""
        rows, width = ids.shape
        x = F.embedding(ids, self.embed)  # [G, L, H] fp32
        cos, sin = (t[:width][None, None] for t in rope)  # [1, 1, L, D]
        kv_out = []
        for layer in self.layers:
            q, k, v = self._qkv(x, layer)  # [G, heads|kv_heads, L, D]
            q, k, v = _rotate(q, cos, sin, self.cache_dtype), _rotate(k, cos, sin, self.cache_dtype), v.to(self.cache_dtype)
            kv_out.append((k, v))
            attention = F.scaled_dot_product_attention(
                q, k.repeat_interleave(self.groups, 1), v.repeat_interleave(self.groups, 1), is_causal=True
            )  # fmt: skip
            x = self._after_attention(x, attention.transpose(1, 2).reshape(rows, width, -1).to(self.dtype), layer)
        last = x[torch.arange(rows, device=x.device), lengths - 1]
        return self._logits(last), kv_out

    @torch.no_grad()
    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        span: int,
        cache: list[tuple[torch.Tensor, torch.Tensor]],
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """One step for rows 0..B-1 of the cache: tokens [B] at positions [B] (each row's current
        length). Writes their k/v at those positions and returns next-token logits [B, V]. `span`
        is max(positions) + 1, the columns worth attending over (given, so nothing syncs here)."""
        rows = tokens.shape[0]
        x = F.embedding(tokens, self.embed)[:, None]  # [B, 1, H]
        cos, sin = rope[0][positions][:, None, None], rope[1][positions][:, None, None]  # [B, 1, 1, D]
        row_index = torch.arange(rows, device=tokens.device)
        visible = (torch.arange(span, device=tokens.device)[None] <= positions[:, None])[:, None, None]
        for layer, (k_cache, v_cache) in zip(self.layers, cache, strict=True):
            q, k, v = self._qkv(x, layer)  # [B, heads|kv_heads, 1, D]
            q, k = _rotate(q, cos, sin, self.cache_dtype), _rotate(k, cos, sin, self.cache_dtype)
            k_cache[row_index, :, positions] = k[:, :, 0]
            v_cache[row_index, :, positions] = v[:, :, 0].to(self.cache_dtype)
            # A kv head's query heads become `groups` query rows of that head: no k/v copies.
            grouped = q.reshape(rows, self.kv_heads, self.groups, self.head_dim)
            attention = _decode_attention(grouped, k_cache[:rows, :, :span], v_cache[:rows, :, :span], visible)
            x = self._after_attention(x, attention.reshape(rows, 1, -1).to(self.dtype), layer)
        return self._logits(x[:, 0])

    # ---- pieces -------------------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """HF's LlamaRMSNorm on the fp32 residual, cast for the next matmul."""
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (weight * normed).to(self.dtype)

    def _qkv(self, x: torch.Tensor, layer: LayerWeights):
        rows, width, _ = x.shape
        qkv = F.linear(self._norm(x, layer.input_norm), layer.qkv, layer.qkv_bias)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        shape = (rows, width, -1, self.head_dim)
        return q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)

    def _after_attention(self, x: torch.Tensor, attention: torch.Tensor, layer: LayerWeights) -> torch.Tensor:
        x = x + F.linear(attention, layer.out, layer.out_bias).float()
        gate, up = F.linear(self._norm(x, layer.post_norm), layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, layer.down, layer.down_bias).float()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._norm(x, self.final_norm), self.lm_head, self.lm_head_bias).float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """RoPE as HF's `apply_rotary_pos_emb` (rotate-half convention), in fp32, cast to `dtype`."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(dtype)


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over the visible columns: q [B, kv_heads, groups, D], k/v
    [B, kv_heads, S, D], visible [B, 1, 1, S]. Written out because with a handful of query rows
    per head two batched matmuls beat the CPU's fused SDPA kernel (1.5 ms against 2.6 ms per
    layer at 128 rows, fp32, measured here)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill_(~visible, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _cat_bias(biases, weights, cast):
    """One bias for stacked weights; zeros stand in for a missing piece (all missing: None)."""
    if all(b is None for b in biases):
        return None
    return cast(torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(biases, weights, strict=True)]))

"""Per-sequence log-probabilities of completions, from logits and masks.

Definition (DESIGN.md section 6, the same as TRL 1.16 and the DPO reference code): the log-prob of
a completion is the sum, over completion tokens, of log_softmax(logits[:, :-1]) gathered at
input_ids[:, 1:]; prompt and padding positions are masked out. Token t is predicted by the
logits at position t-1, hence the shift by one.

Two paths give the same numbers (to float rounding, about 3e-5 per logit from the attention
kernels), chosen by the batch's layout (`data.batching`):
- padded rows (`SequenceBatch`): the whole model, full logits, then `sequence_logprobs`;
- prefix-shared, packed rows (`PackedSequences`): the model's trunk with a 4-D attention mask
  and explicit position ids gives hidden states; the LM head and log-softmax then run only at
  the positions that predict completion tokens, a chunk at a time, with a backward pass that
  recomputes each chunk's logits (`SelectedTokenLogprobs`). The [tokens x vocab] logits never
  exist: for SmolLM2 (vocabulary 49,152) that is 190 KB per token per copy, in fp32.
"""

from __future__ import annotations

import torch

from ..data.batching import PackedSequences, SequenceBatch
from . import span_attention

# Completion positions per chunk of LM-head work: bounds the transient logits to
# chunk x vocab floats (1024 x 49,152 x 4 bytes = 200 MB for SmolLM2).
LOGIT_CHUNK_TOKENS = 1024


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) for t >= 1.

    logits: [B, T, V]; input_ids: [B, T] -> [B, T-1] (position t-1 holds the log-prob of token t).
    """
    # logsumexp + gather instead of a full log_softmax: the same numbers without materialising a
    # second [B, T, V] tensor (SmolLM2's vocabulary is 49,152 wide).
    shifted = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = torch.gather(shifted, -1, targets).squeeze(-1)
    return picked - torch.logsumexp(shifted, dim=-1)


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of completion-token log-probs per row, and the number of completion tokens.

    logits: [B, T, V]; input_ids: [B, T]; completion_mask: [B, T], 1 at completion tokens (built
    from lengths, never from `input_ids == pad`, since pad == EOS for SmolLM2).
    Returns (logps [B], token_counts [B]).
    """
    mask = completion_mask[:, 1:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    per_token = token_logprobs(logits, input_ids)
    return (per_token * mask).sum(-1), mask.sum(-1)


def batch_logprobs(model, batch: SequenceBatch | PackedSequences) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence completion log-prob sums [N] and token counts [N], for either layout."""
    if isinstance(batch, PackedSequences):
        return packed_logprobs(model, batch)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return sequence_logprobs(logits, batch.input_ids, batch.completion_mask)


def pair_logprobs(model, batch) -> dict[str, torch.Tensor]:
    """Forward a `PairBatch`: chosen and rejected log-prob sums [B] and their token counts [B]."""
    logps, counts = batch_logprobs(model, batch.sequences)
    b = batch.num_pairs
    return {
        "chosen_logps": logps[:b],
        "rejected_logps": logps[b:],
        "chosen_lengths": counts[:b],
        "rejected_lengths": counts[b:],
    }


# ----------------------------------------------------------------------------- the fast path


def packed_logprobs(
    model, batch: PackedSequences, chunk_tokens: int = LOGIT_CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence completion log-prob sums [N] and token counts [N] from packed rows.

    A causal LM whose output layer is a plain linear map (Llama, Mistral, Qwen, SmolLM2, ...) gets
    hidden states from its trunk and the LM head only at predicting positions. Anything else
    (logit soft-capping, logit scaling, an adapted head) runs whole, and its logits are gathered.
    """
    if is_prompt_learning(model):  # virtual tokens prepended by peft would not match the 4-D mask
        raise ValueError("--batching fast does not support prompt-learning adapters; use --batching padded")
    base = unwrap_peft(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear) and plain_output_layer(base.config):
        trunk = decoder_of(base)
        hidden = packed_outputs(
            lambda ids, mask, positions, **spans: (
                trunk(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **spans
                ).last_hidden_state
            ),
            model,
            batch,
        )
        picked = hidden.index_select(0, batch.source_index)
        per_token = selected_token_logprobs(picked, head.weight, head.bias, batch.target_ids, chunk_tokens)
    else:
        logits = packed_outputs(
            lambda ids, mask, positions, **spans: (
                model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **spans
                ).logits
            ),
            model,
            batch,
        )
        flat = logits.index_select(0, batch.source_index).float()
        per_token = flat.gather(1, batch.target_ids[:, None]).squeeze(1) - torch.logsumexp(flat, dim=-1)
    logps = torch.zeros(batch.num_sequences, dtype=per_token.dtype, device=per_token.device)
    return logps.index_add(0, batch.sequence_index, per_token), batch.completion_lengths()


def packed_outputs(run, model, batch: PackedSequences) -> torch.Tensor:
    """`run(input_ids, attention_mask, position_ids, **attention_kwargs)` -> [R, T, ...] on each row
    group of `batch`, flattened to [positions, ...] and concatenated: the layout `batch`'s index
    tensors address. `model` says which attention implementation (and dtype) the masks are for.

    Under SDPA the rows' spans go along too, so attention computes only the scores the mask keeps
    (`models.span_attention`); eager attention takes the 4-D mask alone.
    """
    spans = implementation_of(model) == "sdpa"
    if spans:
        span_attention.install()
    outputs = []
    for group in batch.groups:
        extra = {span_attention.SPANS_KWARG: group.spans} if spans else {}
        out = run(
            group.input_ids, attention_mask_for(model, group.attention_mask), group.position_ids, **extra
        )
        outputs.append(out.reshape(-1, *out.shape[2:]))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def unwrap_peft(model):
    """The transformers model inside a peft wrapper (LoRA layers are injected in place, so calling
    its parts runs the adapters, and `disable_adapter()` on the wrapper still switches them off)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def is_prompt_learning(model) -> bool:
    if not hasattr(model, "peft_config"):
        return False
    config = model.peft_config.get(getattr(model, "active_adapter", "default"))
    return bool(getattr(config, "is_prompt_learning", False))


def decoder_of(causal_lm):
    """The trunk of a causal LM (everything but the output layer)."""
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    return decoder if decoder is not None else causal_lm.base_model


def plain_output_layer(config) -> bool:
    """True when logits = lm_head(final hidden state) exactly, with nothing applied after it."""
    if getattr(config, "final_logit_softcapping", None):  # Gemma 2: tanh soft-capping
        return False
    if getattr(config, "logit_scale", 1.0) not in (None, 1.0):  # Cohere: logits * logit_scale
        return False
    return getattr(config, "logits_scaling", 1.0) in (None, 1.0)  # Granite: logits / logits_scaling


def implementation_of(model) -> str:
    """The attention implementation transformers runs for `model` (its config's choice)."""
    return getattr(model.config, "_attn_implementation", None) or "sdpa"


def attention_mask_for(model, mask: torch.Tensor) -> torch.Tensor:
    """The boolean [R, 1, T, T] mask as the additive mask (0 or the dtype's minimum) that SDPA and
    eager attention both take, in the dtype the attention runs in.

    transformers 5 passes a 4-D mask through untouched (`masking_utils`), so it must already be in
    the kernel's form. Additive rather than boolean on purpose: SDPA converts a boolean mask to an
    additive one inside every layer and keeps each copy for the backward pass (30 copies of
    [R, 1, T, T] floats for SmolLM2, 0.8 GB at 8 rows of 930 tokens); one shared tensor costs one.
    """
    implementation = implementation_of(model)
    if implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"--batching fast needs sdpa or eager attention, and the model uses {implementation}; use --batching padded"
        )
    device_type = mask.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = next(model.parameters()).dtype
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


def selected_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_tokens: int = LOGIT_CHUNK_TOKENS,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[targets] per row, fp32 [M], never holding [M, V].

    hidden: [M, H]; weight: [V, H] (the LM head, possibly tied to the embeddings); targets: [M].
    Under autocast the matmuls run in the autocast dtype, as `lm_head` would; log-softmax in fp32.
    """
    device_type = hidden.device.type
    compute_dtype = (
        torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    )
    return SelectedTokenLogprobs.apply(hidden, weight, bias, targets, chunk_tokens, compute_dtype)


def _chunk_logits(hidden, weight, bias, dtype) -> torch.Tensor:
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    return logits.float()


class SelectedTokenLogprobs(torch.autograd.Function):
    """Chunked linear + log-softmax + gather, recomputing each chunk's logits in the backward pass.

    With z = W h + b and p = softmax(z): d log p_y / dz = onehot(y) - p. So for an upstream
    gradient g per token, dz = g (onehot(y) - p), dh = dz W, dW = dz^T h, db = sum dz. Saving only
    h and logsumexp(z) (p = exp(z - lse)) costs one extra [chunk, V] matmul per chunk in backward
    instead of keeping every chunk's logits alive until then (the fused linear-cross-entropy
    trick of Liger-Kernel and Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary LMs").
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens, compute_dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            picked = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            lse = torch.empty_like(picked)
            for start in range(0, hidden.shape[0], chunk_tokens):
                end = start + chunk_tokens
                logits = _chunk_logits(hidden[start:end], weight, bias, compute_dtype)
                lse[start:end] = torch.logsumexp(logits, dim=-1)
                picked[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_tokens, ctx.compute_dtype = chunk_tokens, compute_dtype
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        dtype, chunk = ctx.compute_dtype, ctx.chunk_tokens
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        )
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                end = start + chunk
                h, g = hidden[start:end], grad_out[start:end].float()
                grad_logits = (_chunk_logits(h, weight, bias, dtype) - lse[start:end, None]).exp_()  # softmax
                grad_logits.mul_(-g[:, None]).scatter_add_(1, targets[start:end, None], g[:, None])
                if want_bias:
                    grad_bias += grad_logits.sum(0)
                grad_logits = grad_logits.to(dtype)
                if want_hidden:
                    grad_hidden[start:end] = (grad_logits @ weight.to(dtype)).to(hidden.dtype)
                if want_weight and dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.T, h.float())  # in place: no [V, H] temporary
                elif want_weight:
                    grad_weight += (grad_logits.T @ h.to(dtype)).float()
        grad_weight = grad_weight.to(weight.dtype) if want_weight else None
        grad_bias = grad_bias.to(bias.dtype) if want_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None

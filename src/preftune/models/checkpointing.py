"""Activation checkpointing: keep fewer activations for the backward pass, recompute the rest.

Activations, not weights, fill the memory when training a small model on long pairs: SmolLM2-135M
keeps about 50 KB per token per layer (fp32), 5-6 GB for a batch of 8 pairs of 450 tokens, against
2.2 GB for weights, gradients and AdamW state together. Three settings:

- `off`: keep everything (fastest);
- `selective`: keep the outputs of matrix multiplications and attention, recompute the cheap
  element-wise work between them (norms, rotary embeddings, activation functions, the key/value
  head copies) in the backward pass: about half the activation memory for little time, since the
  recomputed ops are a small share of the FLOPs (the policy of Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models", applied per op by PyTorch's selective
  checkpointing);
- `full`: keep only each transformer block's input and rerun the block in the backward pass
  (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): the least memory, for one
  extra forward pass (about a third more time per training step).

Non-reentrant checkpointing throughout: it needs no `requires_grad` input (frozen embeddings under
LoRA are fine) and composes with the 4-D masks of `--batching fast`.
"""

from __future__ import annotations

from functools import partial

import torch

from .logprobs import unwrap_peft

CHECKPOINTING_MODES = ("off", "selective", "full")

# Ops whose outputs `selective` keeps: the matmuls and attention kernels (recomputing them would
# cost real FLOPs); anything else is recomputed.
_KEPT_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _keep_matmuls(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def enable_activation_checkpointing(model, mode: str) -> None:
    """Turn on `mode` for every transformer block of `model` (a causal LM, a bare trunk, or either
    wrapped by peft). It applies in training mode only; evaluation passes keep nothing anyway."""
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(
            f"activation checkpointing must be one of {', '.join(CHECKPOINTING_MODES)}, got {mode!r}"
        )
    if mode == "off":
        return
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    options: dict = {"use_reentrant": False}
    if mode == "selective":
        options["context_fn"] = partial(create_selective_checkpoint_contexts, _keep_matmuls)
    target = unwrap_peft(model)
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(target).__name__} does not support activation checkpointing; use --activation-checkpointing off"
        )
    # transformers 5 renamed gradient_checkpointing_enable; the old name warns and goes in v6.
    enable = getattr(target, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=options)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)

"""The weights a model applies right now, LoRA adapters merged: what an engine samples with.

A peft LoRA layer computes W x + B A x * scaling. A sampler that only needs the function can fold
that into one matrix, W + B A * scaling (peft's `get_delta_weight`), and run at the base model's
speed. Adapters that are disabled (`with model.disable_adapter():`, the reference of a LoRA run)
or already merged contribute nothing extra.
"""

from __future__ import annotations

import torch


def base_model(model):
    """The transformers model under a peft wrapper (its LoRA layers are read by `effective_weight`)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_lora_layer(module) -> bool:
    return hasattr(module, "get_base_layer") and hasattr(module, "lora_A")


def effective_weight(linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) that a possibly LoRA-wrapped linear applies now, detached. A plain linear's
    own tensors are returned, not copies."""
    if is_lora_layer(linear):
        base = linear.get_base_layer()
        weight = base.weight.detach()
        if not linear.disable_adapters and not linear.merged:
            for name in linear.active_adapters:
                if name in linear.lora_A:
                    weight = weight + linear.get_delta_weight(name).detach().to(weight.dtype)
        return weight, None if base.bias is None else base.bias.detach()
    return linear.weight.detach(), None if linear.bias is None else linear.bias.detach()


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's state dict under its plain transformers names, adapters folded in."""
    base = base_model(model)
    state: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if is_lora_layer(module):
            weight, bias = effective_weight(module)
            state[f"{name}.weight"] = weight
            if bias is not None:
                state[f"{name}.bias"] = bias
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".base_layer." in name:
            continue  # the adapter's own pieces, folded in above
        state.setdefault(name, tensor.detach())
    return state

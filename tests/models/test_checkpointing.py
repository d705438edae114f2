"""Activation checkpointing: same numbers, and the promised amount of recomputation."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from preftune.data.batching import collate_pairs
from preftune.models.checkpointing import enable_activation_checkpointing
from preftune.models.load import LoraSettings, load_policy
from preftune.models.logprobs import pair_logprobs
from preftune.models.reward_model import from_causal_lm
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.train.reward import pair_rewards

from .test_fast_logprobs import tokenized_hard_pairs

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in MATMULS
        return func(*args, **(kwargs or {}))


def train_step(model, batch):
    """(chosen log-probs, gradients, matmuls run in the backward pass) for one step."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = pair_logprobs(model, batch)
    with CountMatmuls() as counter:
        (out["chosen_logps"].sum() - 0.5 * out["rejected_logps"].sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["chosen_logps"].detach(), grads, counter.count


@pytest.mark.parametrize("layout", ["fast", "padded"])
def test_modes_give_the_same_gradients_and_recompute_what_they_promise(layout):
    tokenizer = tiny_tokenizer()
    batch = collate_pairs(tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id, layout)
    results = {}
    for mode in ("off", "selective", "full"):
        model = tiny_model(tokenizer, seed=0)
        enable_activation_checkpointing(model, mode)
        results[mode] = train_step(model, batch)
    logps, grads, matmuls = results["off"]
    for mode in ("selective", "full"):
        torch.testing.assert_close(results[mode][0], logps, rtol=0, atol=0)
        for name, grad in grads.items():
            torch.testing.assert_close(
                results[mode][1][name], grad, rtol=1e-5, atol=1e-7, msg=f"{mode} {name}"
            )
    # `full` reruns each of the 2 blocks in the backward pass: 6 of its 7 matmuls (the rerun stops
    # once everything the backward needs is back, and down_proj's output is not needed).
    # `selective` reruns none of them (their outputs are kept), only the element-wise work.
    assert results["selective"][2] == matmuls
    assert results["full"][2] == matmuls + 2 * 6


def test_lora_policy_and_reward_trunk():
    policy, tokenizer = load_policy("tiny", lora=LoraSettings(r=4, alpha=8), seed=0)
    batch = collate_pairs(tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id, "fast")
    reference = train_step(policy, batch)
    enable_activation_checkpointing(policy, "full")
    checkpointed = train_step(policy, batch)
    assert reference[1].keys() == checkpointed[1].keys() and any("lora_A" in n for n in reference[1])
    for name, grad in reference[1].items():
        torch.testing.assert_close(checkpointed[1][name], grad, rtol=1e-5, atol=1e-7)

    model, tokenizer = from_causal_lm("tiny", seed=0)
    enable_activation_checkpointing(model.backbone, "selective")
    model.train()
    chosen, rejected = pair_rewards(
        model, collate_pairs(tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id, "fast")
    )
    (chosen - rejected).sum().backward()
    assert model.backbone.layers[0].mlp.up_proj.weight.grad is not None


def test_bad_mode_and_unsupported_model():
    with pytest.raises(ValueError, match="must be one of off, selective, full, got 'some'"):
        enable_activation_checkpointing(tiny_model(), "some")
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2), "full")
    enable_activation_checkpointing(torch.nn.Linear(2, 2), "off")  # off never touches the model

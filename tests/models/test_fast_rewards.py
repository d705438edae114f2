"""Reward models on the fast layout: rewards read at each sequence's last token of prefix-shared,
packed rows equal the padded path's (tiny, SmolLM2's shapes, LoRA), and a reward-model run has
the same loss trajectory under each layout."""

from __future__ import annotations

import pytest
import torch

from preftune.config import RMConfig, resolve_config
from preftune.data.batching import collate_pairs
from preftune.data.schema import Message, PreferencePair, write_jsonl
from preftune.data.tokenize import TokenizedPair
from preftune.models.load import LoraSettings
from preftune.models.reward_model import ScalarHeadModel, from_causal_lm
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train.reward import pair_rewards, train_reward_model

from .test_fast_logprobs import LAYOUTS, hard_pairs, smollm2_shaped, tokenized_hard_pairs


def assert_rewards_agree(model, tokens, pad_id, grads=True):
    def run(layout, pack_length):
        model.zero_grad(set_to_none=True)
        chosen, rejected = pair_rewards(model, collate_pairs(tokens, pad_id, layout, pack_length))
        if grads:
            (chosen.sum() - 2.0 * rejected.sum()).backward()
        grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None} if grads else {}
        return chosen.detach(), rejected.detach(), grad

    reference = run("padded", 0)
    for layout, pack_length in LAYOUTS:
        chosen, rejected, grad = run(layout, pack_length)
        torch.testing.assert_close(chosen, reference[0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(rejected, reference[1], rtol=1e-5, atol=1e-4)
        assert grad.keys() == reference[2].keys() and grad
        for name in grad:
            torch.testing.assert_close(grad[name], reference[2][name], rtol=1e-4, atol=1e-5, msg=name)
    return reference


def test_tiny_reward_model_matches_padded():
    model, tokenizer = from_causal_lm("tiny", seed=0)
    chosen, rejected, _ = assert_rewards_agree(model, tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id)
    assert not torch.equal(chosen, rejected)  # the rewards do depend on the response


def test_lora_reward_model_matches_padded():
    model, tokenizer = from_causal_lm("tiny", seed=0, lora=LoraSettings(r=4, alpha=8))
    assert_rewards_agree(model, tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id)


def test_smollm2_shaped_reward_model_matches_padded():
    trunk = smollm2_shaped().model
    head = torch.nn.Linear(576, 1)
    with torch.no_grad():
        head.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    model = ScalarHeadModel(trunk, head)
    generator = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, 49152, (n,), generator=generator).tolist()

    tokens = [
        TokenizedPair([1] + ids(30), ids(12) + [2], [2]),  # rejected is only its EOS
        TokenizedPair([1] + ids(50), ids(70), ids(5) + [2]),  # chosen cut at the limit
        TokenizedPair([1] + ids(9), ids(3) + [2], ids(20) + [2]),
    ]
    assert_rewards_agree(model, tokens, pad_id=2)


def test_reward_model_loss_trajectory_is_the_same_under_each_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "reference_cache_dir", lambda: tmp_path / "refcache")
    pairs = [
        p if p.rejected.content else PreferencePair(p.prompt, p.chosen, Message("assistant", "."))
        for p in hard_pairs()
    ]
    data = tmp_path / "pairs.jsonl"
    write_jsonl(pairs * 4, data)
    trajectories = {}
    for layout, pack_length in [("padded", 0)] + LAYOUTS:
        config = resolve_config(RMConfig, None, dict(
            model="tiny", data=str(data), out=str(tmp_path / f"{layout}-{pack_length}"), batch_size=4, max_steps=20,
            lr=3e-3, max_length=160, max_prompt_length=96, batching=layout, pack_length=pack_length, seed=0,
        ))  # fmt: skip
        trajectories[(layout, pack_length)] = [
            r for r in read_metrics(train_reward_model(config, show_progress=False)) if "loss" in r
        ]
    reference = trajectories[("padded", 0)]
    assert len(reference) == 20 and reference[-1]["loss"] < reference[0]["loss"] - 0.1
    for key, rows in trajectories.items():
        for step, (mine, theirs) in enumerate(zip(rows, reference, strict=True), start=1):
            for name in ("loss", "accuracy"):
                assert mine[name] == pytest.approx(theirs[name], abs=1e-4), f"{key} step {step} {name}"
            assert mine["margin"] == pytest.approx(theirs["margin"], rel=1e-4, abs=1e-4), (
                f"{key} step {step} margin"
            )
            # Not mean_reward: Bradley-Terry cannot see a shift of all rewards, so without a centering
            # term their mean wanders along that flat direction with the rounding (1e-3 here).

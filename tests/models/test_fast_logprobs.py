"""The fast path (prefix-shared, packed, LM head only at completions) against the padded reference.

Tolerance (issue 8): 1e-5 relative plus 1e-3 absolute on per-sequence sums, fp32: the attention
kernels differ at about 3e-5 per logit between a padded row and a packed one.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from preftune.config import DPOConfig, resolve_config
from preftune.data.batching import collate_pairs
from preftune.data.schema import Message, PreferencePair, write_jsonl
from preftune.data.tokenize import PairTokenizer, TokenizedPair
from preftune.models import logprobs
from preftune.models.load import LoraSettings, load_policy
from preftune.models.logprobs import pair_logprobs, selected_token_logprobs
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train.dpo import train_dpo

# Prefix sharing alone (one pair per row), + packing into rows as long as the longest pair, + one row.
LAYOUTS = [("fast", 1), ("fast", 0), ("fast", 4096)]
LONG = "Plants eat sunlight and make their own food from light, water and air. " * 12


def hard_pairs() -> list[PreferencePair]:
    """Multi-turn prompts, empty-ish responses, and prompts/responses cut at the length limits."""
    return [
        PreferencePair(
            [Message("user", "Why is the sky blue?")],
            Message("assistant", "Sunlight bounces off air."),
            Message("assistant", "The film was boring."),
        ),  # fmt: skip
        PreferencePair(
            [
                Message("system", "You are kind."),
                Message("user", "Hello!"),
                Message("assistant", "Hi, how are you?"),
                Message("user", "How do magnets work?"),
            ],  # fmt: skip
            Message("assistant", "Magnets pull on iron."),
            Message("assistant", ""),  # empty: the response is its closing EOS alone
        ),
        PreferencePair(
            [Message("user", "Thank you!")], Message("assistant", "."), Message("assistant", LONG)
        ),
        PreferencePair(
            [
                Message("user", LONG),
                Message("assistant", "Yes."),
                Message("user", "Explain photosynthesis. " + LONG),
            ],
            Message("assistant", LONG),
            Message("assistant", "Plants eat sunlight!"),
        ),
    ]


def tokenized_hard_pairs(tokenizer, max_length=160, max_prompt_length=96) -> list[TokenizedPair]:
    pair_tokenizer = PairTokenizer(tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    tokens = [pair_tokenizer(p) for p in hard_pairs()]
    stats = pair_tokenizer.stats
    assert stats.prompts_truncated >= 1 and stats.responses_truncated >= 2  # the limits really bite
    assert any(len(t.rejected_ids) == 1 for t in tokens)  # and an EOS-only response is there
    assert any(len(t.prompt_ids) + len(t.chosen_ids) == max_length for t in tokens)
    return tokens


def assert_layouts_agree(model, tokens, pad_id, grads=False):
    def run(layout, pack_length):
        model.zero_grad(set_to_none=True)
        out = pair_logprobs(model, collate_pairs(tokens, pad_id, layout, pack_length))
        if grads:  # any scalar mixing chosen and rejected with different weights
            (0.7 * out["chosen_logps"].sum() - 1.3 * out["rejected_logps"].sum()).backward()
        grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None} if grads else {}
        return {k: v.detach() for k, v in out.items()}, grad

    reference, reference_grad = run("padded", 0)
    for layout, pack_length in LAYOUTS:
        out, grad = run(layout, pack_length)
        for key in ("chosen_logps", "rejected_logps"):
            torch.testing.assert_close(
                out[key], reference[key], rtol=1e-5, atol=1e-3, msg=f"{key} pack={pack_length}"
            )
        for key in ("chosen_lengths", "rejected_lengths"):
            assert torch.equal(out[key], reference[key])
        assert grad.keys() == reference_grad.keys()
        for name in grad:
            torch.testing.assert_close(grad[name], reference_grad[name], rtol=1e-4, atol=1e-5, msg=name)
    return reference


def test_tiny_logps_and_gradients_match_padded():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed=0)
    reference = assert_layouts_agree(
        model, tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id, grads=True
    )
    assert bool((reference["chosen_logps"] < 0).all())


def test_pad_is_eos_tokenizer():
    tokenizer = tiny_tokenizer(pad_is_eos=True)  # SmolLM2's convention
    assert_layouts_agree(
        tiny_model(tokenizer, seed=1), tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id
    )


def smollm2_shaped(num_layers: int = 2) -> LlamaForCausalLM:
    """SmolLM2-135M's shapes (vocab 49,152, hidden 576, 9 heads / 3 KV heads, MLP 1536, RoPE theta
    1e5, tied embeddings), random weights, fewer layers so the test runs in seconds."""
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=num_layers,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).float()


def test_smollm2_architecture_matches_padded():
    model = smollm2_shaped()
    generator = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 49152, (n,), generator=generator).tolist()

    # Lengths like the tokenized hard pairs: long prompts, an EOS-only response, a 1-token one.
    tokens = [
        TokenizedPair([1] + ids(40), ids(25) + [2], ids(9) + [2]),
        TokenizedPair([1] + ids(60), ids(3) + [2], [2]),
        TokenizedPair([1] + ids(7), ids(80), ids(30) + [2]),  # chosen cut at the limit: no EOS
        TokenizedPair([1] + ids(23), [2], ids(1)),
    ]
    assert_layouts_agree(model, tokens, pad_id=2, grads=True)


def test_lora_policy_and_its_disabled_adapter_reference():
    policy, tokenizer = load_policy("tiny", lora=LoraSettings(r=4, alpha=8), seed=0)
    # Move the adapters off zero, so "adapter on" and "adapter off" differ.
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    tokens = tokenized_hard_pairs(tokenizer)
    adapted = assert_layouts_agree(policy, tokens, tokenizer.pad_token_id, grads=True)
    with torch.no_grad(), policy.disable_adapter():
        for layout, pack_length in [("padded", 0)] + LAYOUTS:
            base = pair_logprobs(policy, collate_pairs(tokens, tokenizer.pad_token_id, layout, pack_length))
            if layout == "padded":
                reference = base
            torch.testing.assert_close(base["chosen_logps"], reference["chosen_logps"], rtol=1e-5, atol=1e-3)
    assert (base["chosen_logps"] - adapted["chosen_logps"]).abs().max() > 1e-2


def test_eager_attention_gets_an_additive_mask():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed=2)
    model.config._attn_implementation = "eager"
    assert_layouts_agree(model, tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id)


def test_model_with_a_nonplain_output_layer_runs_whole(monkeypatch):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed=3)
    calls = []
    monkeypatch.setattr(logprobs, "plain_output_layer", lambda config: calls.append(config) or False)
    assert_layouts_agree(model, tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id, grads=True)
    assert calls  # the fallback really ran


def test_unsupported_attention_says_what_to_do():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    model.config._attn_implementation = "flash_attention_2"
    batch = collate_pairs(tokenized_hard_pairs(tokenizer), tokenizer.pad_token_id, "fast")
    with pytest.raises(ValueError, match="use --batching padded"):
        pair_logprobs(model, batch)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_selected_token_logprobs_values_and_gradients(chunk):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (10,), generator=generator)
    upstream = torch.randn(10, generator=generator, dtype=torch.float64)

    fast = selected_token_logprobs(hidden, weight, bias, targets, chunk)
    expected = torch.log_softmax(hidden @ weight.T + bias, -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(fast.double(), expected, rtol=1e-6, atol=1e-6)  # fp32 log-softmax inside
    grads = torch.autograd.grad((fast * upstream).sum(), (hidden, weight, bias))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (hidden, weight, bias))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_selected_token_logprobs_under_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 16, generator=generator, requires_grad=True)
    weight = torch.randn(40, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 40, (6,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = selected_token_logprobs(hidden, weight, None, targets, 4)
    fast.sum().backward()
    expected = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    assert fast.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.float32
    torch.testing.assert_close(fast, expected.detach(), rtol=0.05, atol=0.3)  # bf16 matmul, fp32 softmax


def test_dpo_loss_trajectory_is_the_same_under_each_layout(tmp_path, monkeypatch):
    """20 optimizer steps of DPO (policy and the precomputed reference both on each layout)."""
    monkeypatch.setattr(common, "reference_cache_dir", lambda: tmp_path / "refcache")
    # The readers drop empty responses, so the shortest response here is "." + EOS.
    pairs = [
        p if p.rejected.content else PreferencePair(p.prompt, p.chosen, Message("assistant", "."))
        for p in hard_pairs()
    ]
    pairs = pairs * 3 + [
        PreferencePair(
            [Message("user", f"Tell me about {topic}.")],
            Message("assistant", f"{topic} is lovely!"),
            Message("assistant", "I did not like it at all."),
        )  # fmt: skip
        for topic in ("rain", "bees", "trains", "bread")
    ]
    data = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, data)
    trajectories = {}
    for layout, pack_length in [("padded", 0)] + LAYOUTS:
        config = resolve_config(DPOConfig, None, dict(
            model="tiny", data=str(data), out=str(tmp_path / f"{layout}-{pack_length}"), batch_size=4, max_steps=20,
            lr=1e-3, max_length=160, max_prompt_length=96, batching=layout, pack_length=pack_length, seed=0,
        ))  # fmt: skip
        rows = [r for r in read_metrics(train_dpo(config, show_progress=False)) if "loss" in r]
        trajectories[(layout, pack_length)] = rows
    reference = trajectories[("padded", 0)]
    assert len(reference) == 20 and reference[-1]["loss"] < reference[0]["loss"] - 0.1  # it learns
    for key, rows in trajectories.items():
        for step, (mine, theirs) in enumerate(zip(rows, reference, strict=True), start=1):
            for name in ("loss", "rewards/margins", "rewards/accuracies"):
                assert mine[name] == pytest.approx(theirs[name], abs=1e-4), f"{key} step {step} {name}"
            for name in ("logps/chosen", "logps/rejected"):  # sums over up to 64 tokens
                assert mine[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-3), (
                    f"{key} step {step} {name}"
                )
            assert mine["num_tokens"] == theirs["num_tokens"]


@pytest.mark.smollm2
@pytest.mark.slow
def test_real_smollm2_on_real_data_matches_padded(shared_data):
    from preftune.data.formats import read_pairs

    model, tokenizer = load_policy("smollm2-135m")
    pairs, _ = read_pairs(shared_data / "dpo_en_demo.json")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=512, max_prompt_length=256)
    tokens = [pair_tokenizer(p) for p in pairs[:4]]
    assert pair_tokenizer.stats.responses_truncated > 0
    with torch.no_grad():
        assert_layouts_agree(model.eval(), tokens, tokenizer.pad_token_id)


def test_layout_choice_is_recorded_in_the_run_config(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "reference_cache_dir", lambda: tmp_path / "refcache")
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    config = resolve_config(
        DPOConfig, None, dict(model="tiny", data=str(data), out=str(tmp_path / "run"), max_steps=1)
    )
    assert config.batching == "fast"  # the default
    out = train_dpo(config, show_progress=False)
    assert "batching: fast" in (out / "config.yaml").read_text()

"""The scalar-head model: where rewards are read, padding invariance, head init, save/load layouts."""

from __future__ import annotations

import json

import pytest
import torch

from preftune.data.batching import collate_sequences
from preftune.data.schema import Message
from preftune.data.tokenize import PairTokenizer
from preftune.models.load import LoraSettings, ModelLoadError
from preftune.models.reward_model import (
    ScalarHeadModel,
    from_causal_lm,
    last_token_values,
    load_scalar_model,
    reward_of_sequences,
    save_scalar_model,
    score_responses,
)
from preftune.models.tiny import tiny_tokenizer

PROMPTS = ["Review the movie.", "Why is the sky blue?", "What is the capital of France?"]
RESPONSES = ["The movie was wonderful, funny and warm.", "Sunlight bounces off tiny bits of air.", "Paris."]


def _perturb_adapters(model: ScalarHeadModel) -> None:
    # Fresh LoRA has B = 0, so an adapter that was never trained would not show up in any reward;
    # give B random values so a round trip that dropped the adapter would be caught.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)


def _rows_with_pad_equal_eos():
    tokenizer = tiny_tokenizer(pad_is_eos=True)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [(encode("Review the movie."), encode("It was good.") + [eos]),
            (encode("Hi"), encode("The film was boring, too long and badly written.") + [eos])]  # fmt: skip
    return tokenizer, rows


# ----------------------------------------------------------------------------- last token


def test_last_token_values_reads_the_closing_eos_when_pad_equals_eos():
    tokenizer, rows = _rows_with_pad_equal_eos()
    batch = collate_sequences(rows, tokenizer.pad_token_id)
    lengths = [len(p) + len(c) for p, c in rows]
    assert lengths[0] < lengths[1]  # row 0 is padded, with pad ids equal to its own EOS
    values = torch.arange(batch.input_ids.numel(), dtype=torch.float32).view(batch.input_ids.shape)
    picked = last_token_values(values, batch.attention_mask)
    assert picked.tolist() == [values[0, lengths[0] - 1].item(), values[1, lengths[1] - 1].item()]
    # The position read is each response's closing EOS, not the token before it ...
    assert [batch.input_ids[i, n - 1].item() for i, n in enumerate(lengths)] == [tokenizer.eos_token_id] * 2
    # ... which is where a mask built from `ids != pad` would wrongly stop (the TRL bug).
    naive_length = int((batch.input_ids[0] != tokenizer.pad_token_id).sum())
    assert naive_length == lengths[0] - 1
    # Lengths work the same as the mask.
    assert torch.equal(last_token_values(values, torch.tensor(lengths)), picked)


def test_last_token_values_rejects_empty_rows_and_bad_shapes():
    values = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="between 1 and T"):
        last_token_values(values, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="between 1 and T"):
        last_token_values(values, torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="lengths for 2 rows"):
        last_token_values(values, torch.tensor([1, 2, 3]))


def test_reward_does_not_depend_on_padding():
    model, _ = from_causal_lm("tiny", seed=3)
    tokenizer, rows = _rows_with_pad_equal_eos()
    batch = collate_sequences(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        batched = reward_of_sequences(model.eval(), batch)
        alone = [
            reward_of_sequences(model, collate_sequences([row], tokenizer.pad_token_id)).item()
            for row in rows
        ]
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)
    assert batched.shape == (2,)


def test_forward_gives_one_value_per_position():
    model, tokenizer = from_causal_lm("tiny")
    ids = torch.tensor([[1, 5, 9, 12], [1, 7, 3, 3]])
    values = model(ids, torch.ones_like(ids))
    assert values.shape == (2, 4) and values.dtype == torch.float32
    # Causal: the value at position t does not see later tokens.
    assert values[0, 1].item() == pytest.approx(
        model(ids[:1, :2], torch.ones(1, 2, dtype=torch.long))[0, 1].item(), abs=1e-5
    )


# ----------------------------------------------------------------------------- building


def test_head_is_small_seeded_and_the_lm_head_is_gone():
    first, _ = from_causal_lm("tiny", seed=0)
    again, _ = from_causal_lm("tiny", seed=0)
    other, _ = from_causal_lm("tiny", seed=1)
    hidden = first.hidden_size
    assert first.head.weight.shape == (1, hidden) and first.head.bias is None  # as transformers' "score"
    assert torch.equal(first.head.weight, again.head.weight)
    assert not torch.equal(first.head.weight, other.head.weight)
    # std 1/sqrt(H+1) (loosely: only H draws)
    assert 0.5 / (hidden + 1) ** 0.5 < first.head.weight.std().item() < 1.5 / (hidden + 1) ** 0.5
    assert not any("lm_head" in name for name, _ in first.named_parameters())


def test_lora_trains_only_adapters_and_head():
    model, _ = from_causal_lm("tiny", lora=LoraSettings(r=4, alpha=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert model.is_lora
    assert "head.weight" in trainable
    assert all("lora_" in name for name in trainable if not name.startswith("head."))
    assert any("lora_A" in name for name in trainable)


# ----------------------------------------------------------------------------- save / load


def test_full_round_trip_gives_identical_rewards(tmp_path):
    model, tokenizer = from_causal_lm("tiny", seed=2)
    before = score_responses(model, tokenizer, PROMPTS, RESPONSES)
    folder = save_scalar_model(model, tokenizer, tmp_path / "rm")
    meta = json.loads((folder / "preftune_scalar.json").read_text())
    assert meta["backbone"] == "full" and meta["hidden_size"] == model.hidden_size and meta["version"] == 2
    assert (folder / "config.json").is_file() and not (folder / "backbone").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rm"]  # atomic: no temp folders left behind
    loaded, loaded_tokenizer = load_scalar_model(folder)
    assert score_responses(loaded, loaded_tokenizer, PROMPTS, RESPONSES) == before
    assert not loaded.is_lora


def test_a_full_reward_model_loads_in_transformers_with_the_same_scores(tmp_path):
    """As TRL's reward models: AutoModelForSequenceClassification reads the folder as it is."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tokenizer = from_causal_lm("tiny", seed=3)
    with torch.no_grad():  # a trained-looking head, not the small initial one
        model.head.weight.mul_(50)
    ours = score_responses(model, tokenizer, PROMPTS, RESPONSES)
    folder = save_scalar_model(model, tokenizer, tmp_path / "rm")
    classifier = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    pair_tokenizer = PairTokenizer(hf_tokenizer, max_length=512, max_prompt_length=256)
    theirs = []
    for prompt, response in zip(PROMPTS, RESPONSES, strict=True):
        prompt_ids, response_ids, _ = pair_tokenizer.encode_example([Message("user", prompt)], Message("assistant", response))
        with torch.no_grad():
            theirs.append(float(classifier(input_ids=torch.tensor([prompt_ids + response_ids])).logits[0, 0]))
    assert theirs == pytest.approx(ours, rel=2e-6, abs=1e-5)  # scores near 40: fp32 sums in another order
    assert max(ours) - min(ours) > 0.1  # scores that differ, so the comparison means something


def test_a_version_1_folder_with_a_head_bias_still_loads(tmp_path):
    from safetensors.torch import save_file

    model, tokenizer = from_causal_lm("tiny", seed=6)
    folder = tmp_path / "old"
    model.backbone.save_pretrained(folder / "backbone")
    tokenizer.save_pretrained(folder)
    save_file({"weight": model.head.weight.detach().clone(), "bias": torch.tensor([0.75])}, str(folder / "head.safetensors"))
    meta = {"format": "preftune-scalar-head", "version": 1, "backbone": "full", "base_model": "tiny:6", "hidden_size": model.hidden_size}
    (folder / "preftune_scalar.json").write_text(json.dumps(meta))
    loaded, _ = load_scalar_model(folder)
    expected = [r + 0.75 for r in score_responses(model, tokenizer, PROMPTS, RESPONSES)]
    assert score_responses(loaded, tokenizer, PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-6)
    resaved = save_scalar_model(loaded, tokenizer, tmp_path / "again")  # keeps its layout: the bias matters
    assert json.loads((resaved / "preftune_scalar.json").read_text())["version"] == 1
    assert score_responses(load_scalar_model(resaved)[0], tokenizer, PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-6)


def test_lora_round_trip_saves_only_the_adapter_and_gives_identical_rewards(tmp_path):
    model, tokenizer = from_causal_lm("tiny", lora=LoraSettings(r=4, alpha=8), seed=5)
    _perturb_adapters(model)
    before = score_responses(model, tokenizer, PROMPTS, RESPONSES)
    base, _ = from_causal_lm("tiny", seed=5)
    assert score_responses(base, tokenizer, PROMPTS, RESPONSES) != pytest.approx(
        before, abs=1e-3
    )  # the adapter matters
    folder = save_scalar_model(model, tokenizer, tmp_path / "rm")
    meta = json.loads((folder / "preftune_scalar.json").read_text())
    assert meta["backbone"] == "lora" and meta["base_model"] == "tiny:5"
    assert (folder / "backbone" / "adapter_config.json").is_file()
    assert not (folder / "backbone" / "config.json").exists()
    loaded, loaded_tokenizer = load_scalar_model(folder)
    assert loaded.is_lora
    assert score_responses(loaded, loaded_tokenizer, PROMPTS, RESPONSES) == before

    merged = save_scalar_model(model, tokenizer, tmp_path / "merged", merged=True)
    assert model.is_lora  # merging works on a copy
    assert json.loads((merged / "preftune_scalar.json").read_text())["backbone"] == "full"
    full, _ = load_scalar_model(merged)
    assert score_responses(full, tokenizer, PROMPTS, RESPONSES) == pytest.approx(before, abs=1e-5)


def test_a_reward_model_folder_initialises_a_new_scalar_model_with_its_head(tmp_path):
    model, tokenizer = from_causal_lm("tiny", seed=4)
    folder = save_scalar_model(model, tokenizer, tmp_path / "rm")
    before = score_responses(model, tokenizer, PROMPTS, RESPONSES)
    value_model, _ = from_causal_lm(str(folder), lora=LoraSettings(r=4, alpha=8), seed=9)
    assert value_model.is_lora  # fresh adapters (B = 0) on top: same outputs as the reward model
    assert score_responses(value_model, tokenizer, PROMPTS, RESPONSES) == pytest.approx(before, abs=1e-5)


def test_loading_something_else_is_one_clear_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_scalar_model(tmp_path / "missing")
    (tmp_path / "policy").mkdir()
    with pytest.raises(
        ModelLoadError, match=r"no preftune_scalar.json in it \(not a folder written by `preftune rm`, nor a run folder with final/\)"
    ):
        load_scalar_model(tmp_path / "policy")
    model, tokenizer = from_causal_lm("tiny")
    folder = save_scalar_model(model, tokenizer, tmp_path / "rm")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError) as caught:
        load_scalar_model(folder)
    assert str(caught.value).startswith(f"cannot load reward model '{folder}'") and "\n" not in str(caught.value)


def test_score_responses_checks_lengths():
    model, tokenizer = from_causal_lm("tiny")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        score_responses(model, tokenizer, PROMPTS[:2], RESPONSES[:1])


def test_lora_top_layers_adapts_only_the_last_blocks_and_round_trips(tmp_path):
    from preftune.config import ConfigError

    model, tokenizer = from_causal_lm("tiny", lora=LoraSettings(r=4, alpha=8), lora_top_layers=1, seed=6)
    adapted = {
        name.split("layers.")[1].split(".")[0] for name, _ in model.named_parameters() if "lora_" in name
    }
    assert adapted == {"1"}  # tiny has blocks 0 and 1
    _perturb_adapters(model)
    before = score_responses(model, tokenizer, PROMPTS, RESPONSES)
    loaded, _ = load_scalar_model(save_scalar_model(model, tokenizer, tmp_path / "rm"))
    assert score_responses(loaded, tokenizer, PROMPTS, RESPONSES) == before
    with pytest.raises(ConfigError, match="--lora-top-layers: 3 is more than the trunk's 2 blocks"):
        from_causal_lm("tiny", lora=LoraSettings(r=4, alpha=8), lora_top_layers=3)

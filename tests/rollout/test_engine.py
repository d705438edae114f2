"""The rollout engine against the trainer's own forward, on tiny Llamas (SmolLM2's architecture).

The central invariant: for every sampled sequence, the per-token log-probs the engine reports equal
the trainer's teacher-forced ones (`train/rollout.py: response_logprobs`), 1e-4 in fp32. It is
checked through continuous batching (fewer slots than sequences, so rows enter freed slots and
the cache is compacted), mixed prompt lengths, n samples per prompt, pad == EOS, rows that end at
once and rows that never end.
"""

from __future__ import annotations

import io

import pytest
import torch
from scipy.stats import chisquare

from preftune.data.schema import user_prompt
from preftune.data.tokenize import PairTokenizer
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.rollout import RolloutEngine, RolloutProgress, SamplingParams
from preftune.rollout import engine as engine_module
from preftune.train.rollout import layout_rollout, response_logits_and_hidden, response_logprobs

compact = engine_module._compact
TEXTS = ["Hi", "Why is the sky blue? Tell me about the sunlight and the air.", "Explain magnets.", "Thanks!",
         "What is the capital of France? The capital of France is Paris, a simple, friendly answer."]  # fmt: skip


def prompt_ids(tokenizer, texts=TEXTS) -> list[list[int]]:
    encoder = PairTokenizer(tokenizer, max_length=512, max_prompt_length=256)
    return [encoder.encode_prompt(user_prompt(t))[0] for t in texts]


def teacher_forced(model, tokenizer, result, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(trainer log-probs, engine log-probs, response mask), all [sequences, T]."""
    prompts = [p for p, per in zip(result.prompt_ids, result.completion_ids, strict=True) for _ in per]
    completions = [c for per in result.completion_ids for c in per]
    batch = layout_rollout(prompts, completions, tokenizer.pad_token_id)
    with torch.no_grad():
        logits, _ = response_logits_and_hidden(model, batch, temperature)
    trainer = response_logprobs(logits, batch)
    engine = torch.zeros_like(trainer)
    for row, logprobs in enumerate(lp for per in result.logprobs for lp in per):
        engine[row, : len(logprobs)] = torch.tensor(logprobs)
    return trainer, engine, batch.response_mask


def eos_heavy(tokenizer, seed=1, scale=0.5):
    """A tiny model whose tied EOS embedding is scaled up, so some rows end at once, others later."""
    model = tiny_model(tokenizer, seed=seed)
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.eos_token_id] = model.model.norm.weight * scale
    return model.eval()


@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["pad-distinct", "pad-is-eos"])
@pytest.mark.parametrize(
    "params",
    [SamplingParams(max_new_tokens=10, temperature=0.9, seed=3),
     SamplingParams(max_new_tokens=10, temperature=0.7, top_p=0.9, seed=4),
     SamplingParams(max_new_tokens=10, temperature=1.2, top_k=10, seed=5)],  # fmt: skip
    ids=["plain", "top-p", "top-k"],
)
def test_engine_logprobs_equal_the_trainers_in_fp32(pad_is_eos, params, monkeypatch):
    tokenizer = tiny_tokenizer(pad_is_eos=pad_is_eos)
    model = eos_heavy(tokenizer)
    compactions = []
    monkeypatch.setattr(engine_module, "_compact", lambda *a: compactions.append(1) or compact(*a))
    monkeypatch.setattr(engine_module, "COMPACT_MIN_ROWS", 2)
    # 5 prompts x 6 samples = 30 sequences through 24 slots: rows enter freed slots, the tail compacts.
    engine = RolloutEngine(model, tokenizer, precision="fp32", max_slots=24)
    assert engine.backend == "slots"
    result = engine.generate(prompt_ids(tokenizer), 6, params)
    assert compactions
    lengths = [len(c) for per in result.completion_ids for c in per]
    assert min(lengths) <= 2 and max(lengths) == params.max_new_tokens  # early ends and rows that never end
    for per, done in zip(result.completion_ids, result.finished, strict=True):
        for completion, finished in zip(per, done, strict=True):
            assert completion.count(tokenizer.eos_token_id) == int(finished)
            assert finished == (completion[-1] == tokenizer.eos_token_id)
    trainer, reported, mask = teacher_forced(model, tokenizer, result, params.temperature)
    assert (trainer - reported)[mask].abs().max() < 1e-4


def test_bf16_logprobs_stay_within_the_stated_bound():
    """bf16 matmuls (the CPU's automatic choice where it has bf16 units) against the fp32 trainer.
    Measured on this tiny model: max |diff| 0.0043 nats, mean 0.0005; SmolLM2's figures are in
    bench/README.md. The assertion leaves about 5x headroom on the max, 10x on the mean."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed=2).eval()
    engine = RolloutEngine(model, tokenizer, precision="bf16", max_slots=8)
    params = SamplingParams(max_new_tokens=32, temperature=1.0, seed=0)
    result = engine.generate(prompt_ids(tokenizer), 4, params)
    trainer, reported, mask = teacher_forced(model, tokenizer, result, params.temperature)
    gap = (trainer - reported)[mask].abs()
    assert gap.max() < 0.02 and gap.mean() < 0.005
    assert gap.max() > 0  # bf16 really ran


def test_first_token_frequencies_match_the_models_distribution():
    """The whole path (chat tokenization, prefill, the copy into n slots, sampling) draws from the
    model's own next-token distribution: chi-square over 4,000 first tokens."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed=4).eval()
    ids = prompt_ids(tokenizer, ["Explain magnets."])
    params = SamplingParams(max_new_tokens=1, temperature=0.5, seed=11)
    result = RolloutEngine(model, tokenizer, precision="fp32", max_slots=256).generate(ids, 4000, params)
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits[0, -1]
    probs = torch.softmax(logits.double() / params.temperature, -1)
    counts = torch.bincount(torch.tensor([c[0] for c in result.completion_ids[0]]), minlength=len(probs)).double()
    common = probs * 4000 >= 5
    observed = torch.cat([counts[common], counts[~common].sum()[None]])
    expected = torch.cat([probs[common], probs[~common].sum()[None]]) * 4000
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-4


def test_seeds_reproduce_and_samples_differ(tiny_tokenizer, tiny_model_factory):
    engine = RolloutEngine(tiny_model_factory(), tiny_tokenizer, precision="fp32", max_slots=4)
    ids = prompt_ids(tiny_tokenizer)
    first = engine.generate(ids, 2, SamplingParams(max_new_tokens=12, seed=3))
    again = engine.generate(ids, 2, SamplingParams(max_new_tokens=12, seed=3))
    other = engine.generate(ids, 2, SamplingParams(max_new_tokens=12, seed=4))
    assert first.completion_ids == again.completion_ids and first.logprobs == again.logprobs
    assert first.completion_ids != other.completion_ids
    assert all(a != b for a, b in first.completion_ids)


def test_lora_policy_samples_through_merged_weights_refreshed_on_load():
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny_tokenizer()
    policy = get_peft_model(
        tiny_model(tokenizer, seed=0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"])
    ).eval()
    with torch.no_grad():  # a trained-looking adapter (peft starts B at zero, a no-op)
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    engine = RolloutEngine(policy, tokenizer, precision="fp32", max_slots=8)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=0)
    ids = prompt_ids(tokenizer)
    trainer, reported, mask = teacher_forced(policy, tokenizer, engine.generate(ids, 2, params), 1.0)
    assert (trainer - reported)[mask].abs().max() < 1e-4
    # An update the engine has not seen: its log-probs are stale until load_weights.
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(0.3)
    stale = engine.generate(ids, 2, params)
    trainer, reported, mask = teacher_forced(policy, tokenizer, stale, 1.0)
    assert (trainer - reported)[mask].abs().max() > 1e-2
    engine.load_weights(policy)
    trainer, reported, mask = teacher_forced(policy, tokenizer, engine.generate(ids, 2, params), 1.0)
    assert (trainer - reported)[mask].abs().max() < 1e-4
    # With the adapter disabled the engine loads the base weights: the reference of a LoRA run.
    with policy.disable_adapter():
        reference = RolloutEngine(policy, tokenizer, precision="fp32", max_slots=8)
        result = reference.generate(ids, 2, params)
        trainer, reported, mask = teacher_forced(policy, tokenizer, result, 1.0)
    assert (trainer - reported)[mask].abs().max() < 1e-4


def test_hf_backend_is_the_fallback_and_agrees(tiny_tokenizer, tiny_model_factory):
    """`hf` (transformers' generate) reports the same kind of log-probs; a non-Llama model gets it
    automatically, and asking for `slots` on one is a clear error."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tiny_model_factory()
    engine = RolloutEngine(model, tiny_tokenizer, backend="hf", precision="fp32", batch_size=4)
    params = SamplingParams(max_new_tokens=10, temperature=0.8, seed=1)
    result = engine.generate(prompt_ids(tiny_tokenizer), 2, params)
    trainer, reported, mask = teacher_forced(model, tiny_tokenizer, result, 0.8)
    assert (trainer - reported)[mask].abs().max() < 1e-4
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2))
    assert RolloutEngine(gpt2, tiny_tokenizer).backend == "hf"
    with pytest.raises(ValueError, match="Llama"):
        RolloutEngine(gpt2, tiny_tokenizer, backend="slots")
    with pytest.raises(ValueError, match="rollout engine"):
        RolloutEngine(model, tiny_tokenizer, backend="fast")


def test_greedy_choices_agree_between_backends(tiny_tokenizer, tiny_model_factory):
    """top_k=1 removes the randomness, so both backends must pick the same tokens."""
    model = tiny_model_factory(seed=3)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=1)
    ids = prompt_ids(tiny_tokenizer)
    slots = RolloutEngine(model, tiny_tokenizer, precision="fp32", max_slots=3).generate(ids, 1, params)
    hf = RolloutEngine(model, tiny_tokenizer, backend="hf", precision="fp32").generate(ids, 1, params)
    assert slots.completion_ids == hf.completion_ids


def test_progress_lines_without_a_terminal(tiny_tokenizer, tiny_model_factory):
    stream = io.StringIO()
    progress = RolloutProgress("sampling", 10, 8, interval=0.0, stream=stream, live=False)
    engine = RolloutEngine(tiny_model_factory(), tiny_tokenizer, precision="fp32", max_slots=4)
    engine.generate(prompt_ids(tiny_tokenizer, TEXTS[:5]), 2, SamplingParams(max_new_tokens=8), progress)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) > 5
    assert "sampling: 10/10 sequences" in lines[-2] and "tok/s" in lines[-2] and "ETA 0s" in lines[-2]
    assert lines[-1].startswith("sampling: done, 10/10 sequences")


def test_automatic_precision_follows_the_cpu(monkeypatch, tmp_path, tiny_tokenizer, tiny_model_factory):
    """The engine takes the trainers' choice (`preftune.precision`) and says it in describe()."""
    from preftune import precision

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    engine = RolloutEngine(tiny_model_factory(), tiny_tokenizer)
    assert engine.describe() == "rollout engine=slots precision=bf16 (auto: this CPU has avx512_bf16)"
    assert RolloutEngine(tiny_model_factory(), tiny_tokenizer, precision="fp32").precision == "fp32"
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f\n")
    engine = RolloutEngine(tiny_model_factory(), tiny_tokenizer)
    assert engine.describe() == "rollout engine=slots precision=fp32 (auto: this CPU has no bf16 units)"


def test_bad_requests_are_refused(tiny_tokenizer, tiny_model_factory):
    engine = RolloutEngine(tiny_model_factory(), tiny_tokenizer, precision="fp32")
    with pytest.raises(ValueError, match="n"):
        engine.generate(prompt_ids(tiny_tokenizer), 0, SamplingParams())
    with pytest.raises(ValueError, match="prompt"):
        engine.generate([[]], 1, SamplingParams())
    with pytest.raises(ValueError, match="precision"):
        RolloutEngine(tiny_model_factory(), tiny_tokenizer, precision="fp16")

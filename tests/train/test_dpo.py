"""The DPO loop: learning, accumulation invariance, exact resume, signals, NaN, references, outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from preftune.config import DPOConfig, resolve_config
from preftune.data.tokenize import TokenizedPair
from preftune.losses import dpo as dpo_losses
from preftune.models.reference import reference_cache_key, weights_fingerprint
from preftune.models.tiny import tiny_model
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train.dpo import train_dpo

TOPICS = ["the sky", "magnets", "plants", "rain", "the moon", "bread", "trains", "bees"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = []
    for i in range(16):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({
            "prompt": f"Explain {topic} to a five year old. ({i})",
            "chosen": f"Here is a simple, friendly answer about {topic}!",
            "rejected": "The film was boring, too long and badly written.",
        })  # fmt: skip
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(pairs_file, out, **overrides):
    settings = dict(model="tiny", data=str(pairs_file), out=str(out), batch_size=8, lr=1e-3, max_steps=4, seed=0)
    settings.update(overrides)
    return resolve_config(DPOConfig, None, settings)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE_REFERENCE", str(tmp_path / "refcache"))
    monkeypatch.setattr(common, "reference_cache_dir", lambda: tmp_path / "refcache")


def final_weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


def test_dpo_overfits_16_pairs(pairs_file, tmp_path):
    out = train_dpo(config(pairs_file, tmp_path / "run", max_steps=30), show_progress=False)
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert rows[-1]["rewards/accuracies"] == 1.0
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"] + 1.0
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # policy == reference at step 0
    assert rows[-1]["num_tokens"] > rows[0]["num_tokens"]  # cumulative, as TRL logs it
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "grad_norm", "learning_rate"):
        assert name in rows[-1]


def test_batch_8_equals_batch_1_times_accumulation_8(pairs_file, tmp_path):
    big = train_dpo(config(pairs_file, tmp_path / "big", batch_size=8, grad_accum=1), show_progress=False)
    small = train_dpo(config(pairs_file, tmp_path / "small", batch_size=1, grad_accum=8), show_progress=False)
    big_loss = [r["loss"] for r in read_metrics(big)]
    small_loss = [r["loss"] for r in read_metrics(small)]
    assert len(big_loss) == len(small_loss) == 4
    assert big_loss == pytest.approx(small_loss, abs=1e-5)
    for name, tensor in final_weights(big).items():
        assert torch.allclose(tensor, final_weights(small)[name], atol=1e-5), name


def test_resume_after_sigterm_matches_uninterrupted_run(pairs_file, tmp_path, sigterm_at_clip):
    straight = train_dpo(config(pairs_file, tmp_path / "straight", max_steps=20, batch_size=4), show_progress=False)

    restore_clip = sigterm_at_clip(10)  # the real signal path: SIGTERM arrives during step 10
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stopped:
        train_dpo(config(pairs_file, interrupted, max_steps=20, batch_size=4), show_progress=False)
    assert stopped.value.code == 143
    assert [p.name for p in common.checkpoint_dirs(interrupted)] == ["step-10"]
    assert not (interrupted / "final").exists()
    restore_clip()

    train_dpo(config(pairs_file, interrupted, max_steps=20, batch_size=4, resume=True), show_progress=False)
    expected, resumed = final_weights(straight), final_weights(interrupted)
    for name, tensor in expected.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name
    steps = [r["step"] for r in read_metrics(interrupted)]
    assert steps == list(range(1, 21))  # no duplicated or missing history after resume


def test_nan_loss_stops_and_keeps_last_good_checkpoint(pairs_file, tmp_path, nan_loss_at_call):
    nan_loss_at_call(dpo_losses.DPO_LOSSES, "sigmoid", 5)
    out = tmp_path / "nan"
    with pytest.raises(common.TrainingDiverged, match=r"step 5: loss is nan.*checkpoints/step-4"):
        train_dpo(config(pairs_file, out, max_steps=8, save_every=2), show_progress=False)
    assert [p.name for p in common.checkpoint_dirs(out)] == ["step-2", "step-4"]
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-4")  # intact and loadable


def test_a_huge_learning_rate_never_saves_a_nan_checkpoint(pairs_file, tmp_path):
    """lr 1e30: the loss stays finite for a step while the gradient is already NaN; that gradient
    must not reach the weights, and the checkpoint the error names must really be finite."""
    out = tmp_path / "blowup"
    with pytest.raises(common.TrainingDiverged) as diverged:
        train_dpo(config(pairs_file, out, max_steps=20, save_every=2, lr=1e30), show_progress=False)
    saved = common.checkpoint_dirs(out)
    for checkpoint in saved:
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint
    named = str(saved[-1]) if saved else "no checkpoint was written yet"
    assert named in str(diverged.value)


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path, tiny_model_factory, tiny_tokenizer):
    model = tiny_model_factory()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    optimizer = common.make_optimizer(model, 1e-3, 0.0)
    scheduler = common.make_scheduler(optimizer, "constant", 0, 1)
    settings = config("unused.jsonl", tmp_path)
    with pytest.raises(common.TrainingDiverged, match="weight tensors are not finite"):
        common.save_checkpoint(tmp_path, 1, model, tiny_tokenizer, optimizer, scheduler, common.DataOrder(1, 0), settings, 2)
    assert common.checkpoint_dirs(tmp_path) == []


@pytest.mark.parametrize("loss", sorted(dpo_losses.DPO_LOSSES))
def test_every_loss_variant_trains(pairs_file, tmp_path, loss):
    extra = {"ref": "auto"} if loss == "simpo" else {}
    out = train_dpo(config(pairs_file, tmp_path / loss, loss=loss, max_steps=2, label_smoothing=0.1 if loss == "robust" else 0.0, **extra), show_progress=False)
    rows = read_metrics(out)
    assert len(rows) == 2 and all(r["loss"] is not None for r in rows)


def test_reference_modes_agree(pairs_file, tmp_path):
    """precompute, copy and the adapter-disabled base give the same reference, so the same run."""
    results = {}
    for mode in ("precompute", "copy", "adapter"):
        out = train_dpo(config(pairs_file, tmp_path / mode, lora=True, ref=mode, max_steps=3), show_progress=False)
        results[mode] = read_metrics(out)
    for mode in ("copy", "adapter"):
        for a, b in zip(results["precompute"], results[mode], strict=True):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
            assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-6)


def test_reference_cache_key_covers_model_data_and_settings(tiny_tokenizer):
    pairs = [TokenizedPair([1, 5], [6, 2], [7, 2]), TokenizedPair([1, 8], [9, 2], [10, 2])]
    settings = {"max_length": 64, "max_prompt_length": 32}
    model_print = weights_fingerprint(tiny_model(tiny_tokenizer, seed=0))
    base = reference_cache_key(model_print, pairs, settings)
    assert base == reference_cache_key(weights_fingerprint(tiny_model(tiny_tokenizer, seed=0)), pairs, dict(settings))
    other_model = reference_cache_key(weights_fingerprint(tiny_model(tiny_tokenizer, seed=1)), pairs, settings)
    other_data = reference_cache_key(model_print, [pairs[0], TokenizedPair([1, 8], [9, 2], [11, 2])], settings)
    other_settings = reference_cache_key(model_print, pairs, settings | {"max_length": 65})
    assert len({base, other_model, other_data, other_settings}) == 4


def test_precomputed_reference_is_reused_across_runs(pairs_file, tmp_path, capfd):
    train_dpo(config(pairs_file, tmp_path / "a", max_steps=1), show_progress=False)
    assert "precomputed" in capfd.readouterr().err
    train_dpo(config(pairs_file, tmp_path / "b", max_steps=1), show_progress=False)
    assert "from cache" in capfd.readouterr().err
    train_dpo(config(pairs_file, tmp_path / "c", max_steps=1, max_length=48, max_prompt_length=24), show_progress=False)
    assert "precomputed" in capfd.readouterr().err  # tokenization settings changed


def test_final_model_loads_and_lora_merge(pairs_file, tmp_path):
    out = train_dpo(config(pairs_file, tmp_path / "full", max_steps=2), show_progress=False)
    AutoModelForCausalLM.from_pretrained(out / "final")
    lora = train_dpo(config(pairs_file, tmp_path / "lora", max_steps=2, lora=True, merge=True), show_progress=False)
    assert (lora / "final" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(lora / "final" / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (out / "config.yaml").exists() and "beta: 0.1" in (out / "config.yaml").read_text()

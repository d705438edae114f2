"""The KTO loop: learning from thumbs, the metrics TRL users know, exact resume after SIGTERM, NaN,
reference modes, pairs as input, eval, the run folder and its dashboard kind."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from preftune.config import ConfigError, KTOConfig, resolve_config
from preftune.losses.kto import KTO_LOSSES
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train.kto import train_kto
from preftune.web import runs

TOPICS = ["the sky", "magnets", "plants", "rain", "the moon", "bread", "trains", "bees"]
METRICS = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
           "grad_norm", "learning_rate", "num_tokens", "epoch")  # fmt: skip


@pytest.fixture(scope="module")
def thumbs_file(tmp_path_factory):
    rows = []
    for i in range(16):
        topic = TOPICS[i % len(TOPICS)]
        good = i % 2 == 0
        answer = f"Here is a simple, friendly answer about {topic}!" if good else "The film was boring, too long and badly written."
        rows.append({"prompt": f"Explain {topic} to a five year old. ({i})", "completion": answer, "label": good})
    path = tmp_path_factory.mktemp("data") / "thumbs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(data, out, **overrides):
    settings = dict(model="tiny", data=str(data), out=str(out), batch_size=8, lr=1e-3, max_steps=4, seed=0, precision="fp32")
    return resolve_config(KTOConfig, None, settings | overrides)


def final_weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


def test_kto_learns_from_thumbs(thumbs_file, tmp_path):
    out = train_kto(config(thumbs_file, tmp_path / "run", max_steps=30), show_progress=False)
    rows = read_metrics(out)
    first, last = rows[0], rows[-1]
    # Step 1: policy == reference, so r = 0 and z0 = 0, and each example's loss is lambda / 2.
    assert first["loss"] == pytest.approx(0.5, abs=1e-6) and first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert last["rewards/chosen"] > 0 > last["rewards/rejected"]
    assert last["rewards/margins"] > 0.5 and last["loss"] < first["loss"] - 0.05
    assert all(name in last for name in METRICS)
    assert last["num_tokens"] > first["num_tokens"]  # cumulative, as TRL logs it


def test_weights_set_the_loss_at_the_reference(thumbs_file, tmp_path):
    """At step 1 (r = z0 = 0) every example's loss is lambda_y / 2; the batch of 16 holds 8 of each."""
    out = train_kto(config(thumbs_file, tmp_path / "run", max_steps=1, batch_size=16, desirable_weight=1.3,
                           undesirable_weight=0.6), show_progress=False)  # fmt: skip
    assert read_metrics(out)[0]["loss"] == pytest.approx((8 * 1.3 + 8 * 0.6) / 2 / 16, abs=1e-6)


def test_resume_after_sigterm_matches_uninterrupted_run(thumbs_file, tmp_path, sigterm_at_clip):
    straight = train_kto(config(thumbs_file, tmp_path / "straight", max_steps=12, batch_size=4), show_progress=False)
    restore_clip = sigterm_at_clip(6)  # the real signal path: SIGTERM arrives during step 6
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stopped:
        train_kto(config(thumbs_file, interrupted, max_steps=12, batch_size=4), show_progress=False)
    assert stopped.value.code == 143
    assert [p.name for p in common.checkpoint_dirs(interrupted)] == ["step-6"]
    restore_clip()

    train_kto(config(thumbs_file, interrupted, max_steps=12, batch_size=4, resume=True), show_progress=False)
    expected, resumed = final_weights(straight), final_weights(interrupted)
    for name, tensor in expected.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name
    assert [r["step"] for r in read_metrics(interrupted)] == list(range(1, 13))
    assert [r["kl"] for r in read_metrics(interrupted)] == pytest.approx([r["kl"] for r in read_metrics(straight)], abs=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(thumbs_file, tmp_path, nan_loss_at_call):
    nan_loss_at_call(KTO_LOSSES, "kto", 5)
    out = tmp_path / "nan"
    with pytest.raises(common.TrainingDiverged, match=r"step 5: loss is nan.*checkpoints/step-4"):
        train_kto(config(thumbs_file, out, max_steps=8, save_every=2), show_progress=False)
    assert [p.name for p in common.checkpoint_dirs(out)] == ["step-2", "step-4"]
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-4")


def test_copy_and_adapter_references_agree(thumbs_file, tmp_path):
    results = {}
    for mode in ("copy", "adapter"):
        out = train_kto(config(thumbs_file, tmp_path / mode, lora=True, ref=mode, max_steps=3), show_progress=False)
        results[mode] = read_metrics(out)
    for a, b in zip(results["copy"], results["adapter"], strict=True):
        for name in ("loss", "kl", "rewards/margins"):
            assert a[name] == pytest.approx(b[name], abs=1e-6), name


def test_pairs_train_as_thumbs_and_eval_is_logged(tmp_path):
    rows = [{"prompt": f"Explain {t} simply.", "chosen": f"A friendly answer about {t}.", "rejected": "Go away."}
            for t in TOPICS]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = train_kto(config(data, tmp_path / "run", eval_split=0.25, eval_every=2, max_steps=4), show_progress=False)
    evals = [r for r in read_metrics(out) if "eval/loss" in r]
    assert len(evals) == 2  # at step 2 and at the end
    from preftune.data.unpaired import read_unpaired
    from preftune.train.setup import load_pair_splits

    settings = config(data, tmp_path / "split", eval_split=0.25)
    train, held = load_pair_splits(settings, reader=read_unpaired, group_key=lambda e: tuple(e.prompt))
    # Whole prompts are held out (2 of 8, both answers of each), never half a pair.
    assert len(held) == 4 and not {tuple(e.prompt) for e in train} & {tuple(e.prompt) for e in held}
    assert {"eval/kl", "eval/rewards/chosen", "eval/rewards/rejected", "eval/rewards/margins"} <= evals[-1].keys()
    summary = json.loads((out / "summary.json").read_text())
    assert "eval/loss" in summary["metrics"] and (out / "report.html").exists()
    AutoModelForCausalLM.from_pretrained(out / "final")
    assert runs.run_kind(runs.read_config(out), read_metrics(out)) == "kto"
    assert "kto-kl" in {c.id for c in runs.charts_for(["kto"], read_metrics(out))}


def test_settings_that_cannot_work_are_refused(thumbs_file, tmp_path):
    with pytest.raises(ConfigError, match="--batch-size: must be >= 2"):
        config(thumbs_file, tmp_path / "a", batch_size=1)
    with pytest.raises(ConfigError, match="--ref: adapter needs --lora"):
        config(thumbs_file, tmp_path / "b", ref="adapter")
    with pytest.raises(ConfigError, match="--ref: must be one of auto, copy, adapter, got 'precompute'"):
        config(thumbs_file, tmp_path / "c", ref="precompute")
    with pytest.raises(ConfigError, match="--format: must be one of unpaired"):
        config(thumbs_file, tmp_path / "d", format="thumbs")


def test_accumulation_matches_one_batch_at_step_1(thumbs_file, tmp_path):
    """At step 1 (z0 = 0) batch 8 and 2 x 4 accumulated see the same 8 examples, the same loss and
    gradient; group metrics are means over the examples of each group, not of micro-batch means."""
    runs = [train_kto(config(thumbs_file, tmp_path / name, max_steps=1, batch_size=size, grad_accum=accum,
                             desirable_weight=1.3), show_progress=False)  # fmt: skip
            for name, size, accum in (("one", 8, 1), ("two", 4, 2))]
    (one,), (two,) = (read_metrics(run) for run in runs)
    for name in ("loss", "logps/chosen", "logps/rejected", "grad_norm", "num_tokens"):
        assert two[name] == pytest.approx(one[name], rel=1e-5), name
    # Adam's first step moves each weight by about lr * sign(gradient). Where a gradient is within
    # fp32 summation noise of zero (the runs add the examples in different orders, and CPUs order
    # their reductions differently) its sign, and so that weight's step, can differ by up to 2 x lr.
    other = final_weights(runs[1])
    for name, tensor in final_weights(runs[0]).items():
        diff = (tensor - other[name]).abs()
        assert diff.max() <= 2 * 1e-3 and (diff > 1e-6).float().mean() < 1e-3, name

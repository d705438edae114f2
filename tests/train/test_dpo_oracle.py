"""Oracle: our DPO step matches TRL 1.16's DPOTrainer on the same model, tokenizer and pairs.

TRL is a test dependency (extra [bench]); CI installs it. Step 1's logged metrics come from the
forward pass at the initial weights, step 2's from the weights after one optimizer step, in both
trainers, so comparing the two logged steps compares log-probs at step 0 and the update itself.
"""

from __future__ import annotations

import json

import pytest

from preftune.config import DPOConfig, resolve_config
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train.dpo import train_dpo

trl = pytest.importorskip("trl", reason="TRL is the oracle; install the [bench] extra")

# A plain (non-chat) prompt/completion set: TRL's conversational path keeps the template's "\n"
# after <|im_end|> inside the completion, which preftune deliberately does not (DESIGN.md 2.3).
ROWS = [
    {"prompt": "Why is the sky blue?", "chosen": " Sunlight bounces off air.", "rejected": " The film was boring."},
    {"prompt": "What is a magnet?", "chosen": " Magnets pull on iron.", "rejected": " Hello, how are you?"},
    {"prompt": "Explain photosynthesis.", "chosen": " Plants eat sunlight!", "rejected": " I did not like it at all."},
    {"prompt": "Thank you!", "chosen": " You are welcome.", "rejected": " Paris."},
]
COMPARED = ["logps/chosen", "logps/rejected", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "rpo"])
def test_matches_trl_dpo_trainer(tmp_path, monkeypatch, loss_type):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(common, "reference_cache_dir", lambda: tmp_path / "refcache")
    model_dir = tmp_path / "model"
    tokenizer = tiny_tokenizer(chat_template=False)
    tiny_model(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3,
        logging_steps=1, beta=0.1, precompute_ref_log_probs=True, bf16=False,
        # RPO in TRL 1.16: the sigmoid loss plus its "sft" term, a token mean over the chosen answers.
        loss_type=["sigmoid", "sft"] if loss_type == "rpo" else loss_type,
        loss_weights=[1.0, 0.7] if loss_type == "rpo" else None,
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no", seed=0,
        max_length=512, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
    )  # fmt: skip
    trainer = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
        train_dataset=Dataset.from_list(ROWS), processing_class=AutoTokenizer.from_pretrained(model_dir),
    )  # fmt: skip
    trainer.train()
    theirs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]

    config = resolve_config(DPOConfig, None, dict(
        model=str(model_dir), data=str(data), out=str(tmp_path / "ours"), batch_size=4, max_steps=2,
        lr=1e-3, beta=0.1, loss="sigmoid" if loss_type == "rpo" else loss_type, max_length=512,
        max_prompt_length=256, weight_decay=0.0, sft_weight=0.7 if loss_type == "rpo" else 0.0,
        # TRL 1.16 averages IPO's log-ratios per token (its code comment: as the IPO authors confirmed).
        length_normalize=loss_type == "ipo",
    ))  # fmt: skip
    ours = read_metrics(train_dpo(config, show_progress=False))

    assert len(theirs) == len(ours) == 2
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True), start=1):
        for name in COMPARED:
            assert mine[name] == pytest.approx(reference[name], abs=1e-4), f"step {step} {name}"
        assert mine["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4)

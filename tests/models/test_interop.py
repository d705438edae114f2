"""Every kind of model preftune writes loads in transformers / peft as it is, and every --model,
--ref and --rm takes a run folder (its final/)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import DPOConfig, RMConfig, resolve_config
from preftune.models.load import load_policy
from preftune.models.reward_model import load_scalar_model
from preftune.train import common
from preftune.train.dpo import train_dpo
from preftune.train.reward import train_reward_model

ROWS = [{"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.", "rejected": "No."} for i in range(4)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common_settings = dict(model="tiny", data=str(data), batch_size=4, max_steps=2, lr=1e-2, seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "reference_cache_dir", lambda: root / "refcache")
        full = train_dpo(resolve_config(DPOConfig, None, common_settings | dict(out=str(root / "full"))), show_progress=False)
        lora = train_dpo(resolve_config(DPOConfig, None, common_settings | dict(out=str(root / "lora"), lora=True, merge=True)),
                         show_progress=False)  # fmt: skip
        rm = train_reward_model(resolve_config(RMConfig, None, common_settings | dict(out=str(root / "rm"))), show_progress=False)
        rm_lora = train_reward_model(resolve_config(RMConfig, None, common_settings | dict(out=str(root / "rm-lora"), lora=True)),
                                     show_progress=False)  # fmt: skip
    return {"full": full, "lora": lora, "rm": rm, "rm_lora": rm_lora, "data": data}


def logits(model, ids=(1, 5, 9, 13)):
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits


def test_full_merged_and_checkpoints_load_in_transformers(runs):
    from transformers import AutoModelForCausalLM

    ours, _ = load_policy(str(runs["full"] / "final"))
    for folder in (runs["full"] / "final", *common.checkpoint_dirs(runs["full"]), runs["lora"] / "final" / "merged"):
        assert AutoModelForCausalLM.from_pretrained(folder) is not None, folder
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(runs["full"] / "final")), logits(ours))


def test_a_lora_adapter_names_a_base_that_peft_loads(runs):
    from peft import AutoPeftModelForCausalLM

    for folder in (runs["lora"] / "final", common.checkpoint_dirs(runs["lora"])[-1]):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str((folder / "base").resolve())  # a path, not "tiny:0"
        theirs = AutoPeftModelForCausalLM.from_pretrained(folder)
        ours, _ = load_policy(str(folder))
        torch.testing.assert_close(logits(theirs), logits(ours))


def test_a_moved_lora_run_still_loads_in_preftune(runs, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(runs["lora"], moved)
    shutil.rmtree(runs["lora"] / "final" / "base")  # the path the adapter names is gone
    try:
        model, _ = load_policy(str(moved / "final"))
        assert logits(model).shape[-1] > 0
    finally:
        shutil.copytree(moved / "final" / "base", runs["lora"] / "final" / "base")


def test_a_reward_model_loads_in_transformers(runs):
    from transformers import AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(runs["rm"] / "final")
    assert classifier.config.num_labels == 1
    ours, _ = load_scalar_model(runs["rm"] / "final")
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        torch.testing.assert_close(classifier(input_ids=ids).logits[0, 0], ours(ids, torch.ones_like(ids))[0, -1])


def test_run_folders_stand_for_their_final_model(runs):
    ours, _ = load_policy(str(runs["full"]))
    final, _ = load_policy(str(runs["full"] / "final"))
    torch.testing.assert_close(logits(ours), logits(final))
    result = CliRunner().invoke(app, ["score", "--rm", str(runs["rm"]), "--data", str(runs["data"]), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pairs"] == len(ROWS)
    policy = CliRunner().invoke(app, ["generate", "--model", str(runs["rm"]), "--prompts", str(runs["data"]), "-o", "x.jsonl"])
    assert policy.exit_code == 2 and "is a reward model" in policy.stderr


def test_a_lora_reward_model_loads_in_peft(runs):
    """The trunk's adapter names a base AutoModel loads; with head.safetensors, the same scores."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    backbone = runs["rm_lora"] / "final" / "backbone"
    base = json.loads((backbone / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str((backbone / "base").resolve())
    trunk = PeftModel.from_pretrained(AutoModel.from_pretrained(base), backbone).eval()
    head = load_file(str(runs["rm_lora"] / "final" / "head.safetensors"))["weight"]
    ours, _ = load_scalar_model(runs["rm_lora"] / "final")
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        theirs = trunk(input_ids=ids).last_hidden_state[0, -1] @ head[0]
        torch.testing.assert_close(theirs, ours(ids, torch.ones_like(ids))[0, -1])

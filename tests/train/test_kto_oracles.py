"""Oracles for `preftune kto`: TRL 1.16's KTOTrainer on the same tiny model and rows, and an
independent minimal loop written here; each also fails when it should.

The reference is a second tiny model (another seed), so at step 1 the policy and the reference
already differ: the implied rewards, the KL estimate z0 (> 0 here, asserted, so its clamp does not
hide it) and the loss are all non-trivial from the first logged step. Settings tell variants apart:
beta 0.3, lambda_D 1.3, lambda_U 0.6, more desirable than undesirable examples.

TRL pairs prompt i with completion i-1 of its batch for the KL estimate (in data order, which it
requires); preftune does the same in dataset order within each batch. One batch holds every row, so
both see the same pairs.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from preftune.config import KTOConfig, resolve_config
from preftune.data.tokenize import PairTokenizer
from preftune.data.unpaired import read_unpaired
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics
from preftune.train.kto import train_kto

BETA, LAMBDA_D, LAMBDA_U = 0.3, 1.3, 0.6
ROWS = [  # plain prompts: TRL's conversational path keeps the template's "\n" after EOS (DESIGN.md 2.3)
    {"prompt": "Why is the sky blue?", "completion": " Sunlight bounces off air.", "label": True},
    {"prompt": "What is a magnet?", "completion": " Hello, how are you?", "label": False},
    {"prompt": "Explain photosynthesis.", "completion": " Plants eat sunlight!", "label": True},
    {"prompt": "Thank you!", "completion": " You are welcome.", "label": True},
    {"prompt": "Why does it rain?", "completion": " The film was boring.", "label": False},
]
COMPARED = ["loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"]
POLICY_SEED, REFERENCE_SEED = 0, 9  # seed 9: the KL estimate at step 1 is +0.19 (most seeds give < 0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kto-oracle")
    tokenizer = tiny_tokenizer(chat_template=False)
    for name, seed in (("policy", POLICY_SEED), ("reference", REFERENCE_SEED)):
        tiny_model(tokenizer, seed=seed).save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    for name, rows in (("rows", ROWS), ("flipped", [r | {"label": not r["label"]} for r in ROWS])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def ours(folder, out, *, data="rows", model="policy", ref_model="reference", steps=2, lr=1e-3, loss="kto"):
    settings = dict(loss=loss, model=str(folder / model), ref_model=str(folder / ref_model), data=str(folder / f"{data}.jsonl"),
                    out=str(out), batch_size=len(ROWS), max_steps=steps, lr=lr, beta=BETA, desirable_weight=LAMBDA_D,
                    undesirable_weight=LAMBDA_U, max_length=512, max_prompt_length=256, weight_decay=0.0,
                    precision="fp32")  # fmt: skip
    return train_kto(resolve_config(KTOConfig, None, settings), show_progress=False)


def mismatches(mine: list[dict], reference: list[dict], tolerance: float = 1e-4) -> list[str]:
    """The metrics of each step that differ by more than `tolerance`, named."""
    found = []
    for step, (a, b) in enumerate(zip(mine, reference, strict=True), start=1):
        found += [f"step {step} {n}: {a[n]} vs {b[n]}" for n in COMPARED if abs(a[n] - b[n]) > tolerance]
        if abs(a["grad_norm"] - b["grad_norm"]) > tolerance * max(1.0, abs(b["grad_norm"])):
            found.append(f"step {step} grad_norm: {a['grad_norm']} vs {b['grad_norm']}")
    return found


# ---- TRL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["kto", "apo_zero_unpaired"])
def trl_history(request, files, tmp_path_factory):
    """(loss type, TRL's logged steps)."""
    trl = pytest.importorskip("trl", reason="TRL is the oracle; install the [bench] extra")
    from datasets import Dataset
    from transformers import AutoTokenizer

    args = trl.KTOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=len(ROWS), max_steps=2,
        learning_rate=1e-3, logging_steps=1, beta=BETA, loss_type=request.param, desirable_weight=LAMBDA_D, undesirable_weight=LAMBDA_U,
        bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no", seed=0,
        max_length=512, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
    )  # fmt: skip
    trainer = trl.KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(files / "policy"),
        ref_model=AutoModelForCausalLM.from_pretrained(files / "reference"), args=args,
        train_dataset=Dataset.from_list(ROWS), processing_class=AutoTokenizer.from_pretrained(files / "policy"),
    )  # fmt: skip
    trainer.train()
    return request.param, [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]


def test_matches_trl_kto_trainer(files, trl_history, tmp_path):
    """Step 1: the loss and metrics at the initial weights; step 2: after one AdamW step."""
    loss, theirs = trl_history
    mine = read_metrics(ours(files, tmp_path / "ours", loss=loss))
    assert len(mine) == len(theirs) == 2
    if loss == "kto":
        assert theirs[0]["kl"] > 0.01, "the reference point must be above its clamp for this test to see it"
    assert mismatches(mine, theirs) == []


@pytest.mark.parametrize("swap", ["labels", "policy and reference"])
def test_the_trl_comparison_fails_when_swapped(files, trl_history, tmp_path, swap):
    """The comparison above can fail: desirable <-> undesirable, or policy <-> reference."""
    loss, theirs = trl_history
    if swap == "labels":
        mine = read_metrics(ours(files, tmp_path / "flipped", data="flipped", loss=loss))
    else:
        mine = read_metrics(ours(files, tmp_path / "swapped", model="reference", ref_model="policy", loss=loss))
    assert len(mismatches(mine, theirs)) >= 3


# ---- an independent loop -----------------------------------------------------------------------

STEPS, LR, MAX_NORM = 3, 1e-2, 1.0


def completion_logps(model, prompt_ids, completion_ids):
    """Sum of log p(completion token | everything before it), one sequence, one plain forward."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(input_ids=ids).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1 :].sum()


def independent_loop(folder, data="rows"):
    """KTO written out from the paper: z0 = max(0, mean over i of log pi(y_{i-1}|x_i) - log ref(y_{i-1}|x_i)),
    loss_i = lambda_y (1 - sigmoid(beta (r_i - z0))) or lambda_y (1 - sigmoid(beta (z0 - r_i))), mean
    over all examples; AdamW with clipping and a linear decay, every row in every step."""
    tokenizer = PairTokenizer(tiny_tokenizer(chat_template=False), max_length=512, max_prompt_length=256)
    examples, _ = read_unpaired(folder / f"{data}.jsonl")
    tokens = [tokenizer.tokenize_unpaired(e) for e in examples]
    n = len(tokens)
    model = AutoModelForCausalLM.from_pretrained(folder / "policy")
    reference = AutoModelForCausalLM.from_pretrained(folder / "reference")
    with torch.no_grad():
        ref_logps = [completion_logps(reference, t.prompt_ids, t.completion_ids) for t in tokens]
        ref_kl = [completion_logps(reference, tokens[i].prompt_ids, tokens[i - 1].completion_ids) for i in range(n)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses, kls = [], []
    for step in range(STEPS):
        with torch.no_grad():
            kl_terms = [completion_logps(model, tokens[i].prompt_ids, tokens[i - 1].completion_ids) - ref_kl[i] for i in range(n)]
            z0 = max(0.0, float(sum(kl_terms) / n))
        per_example = []
        for t, ref in zip(tokens, ref_logps, strict=True):
            r = completion_logps(model, t.prompt_ids, t.completion_ids) - ref
            if t.label:
                per_example.append(LAMBDA_D * (1 - torch.sigmoid(BETA * (r - z0))))
            else:
                per_example.append(LAMBDA_U * (1 - torch.sigmoid(BETA * (z0 - r))))
        loss = torch.stack(per_example).mean()
        loss.backward()
        losses.append(float(loss.detach()))
        kls.append(z0)
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        for group in optimizer.param_groups:
            group["lr"] = LR * (1 - step / STEPS)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses, kls, model


def weight_gap(out, model) -> float:
    final = load_file(str(out / "final" / "model.safetensors"))
    expected = model.state_dict()
    return max(float((tensor - expected[name]).abs().max()) for name, tensor in final.items())


def test_matches_an_independent_loop(files, tmp_path):
    out = ours(files, tmp_path / "ours", steps=STEPS, lr=LR)
    losses, kls, model = independent_loop(files)
    logged = read_metrics(out)
    assert [r["loss"] for r in logged] == pytest.approx(losses, abs=2e-5)
    # z0 is a difference of summed log-probs (about -20 nats each here): float32 rounding is relative.
    assert [r["kl"] for r in logged] == pytest.approx(kls, rel=2e-5, abs=2e-5)
    assert kls[0] > 0.01  # the reference point is above its clamp at step 1
    assert weight_gap(out, model) < 1e-4


def test_the_independent_loop_comparison_fails_when_labels_are_swapped(files, tmp_path):
    out = ours(files, tmp_path / "flipped", data="flipped", steps=STEPS, lr=LR)
    losses, _, model = independent_loop(files)
    logged = [r["loss"] for r in read_metrics(out)]
    assert max(abs(a - b) for a, b in zip(logged, losses, strict=True)) > 1e-2
    assert weight_gap(out, model) > 1e-3

"""Each training loop against an independent minimal loop written here, compared after 3 steps.

The oracle shares nothing with the trainer but the tokenizer (tested on its own, golden tokens)
and, for the reward model, the construction of trunk + head: it runs one plain forward pass per
sequence, gathers the completion log-probs itself, writes each loss out from its paper, and steps
AdamW with clipping and the linear schedule by hand. Every step uses the whole (small) data set, so
data order plays no part. The settings are chosen so that variants differ: beta 0.2 (IPO's target
1/(2 beta) = 2.5, not 1), label smoothing 0.2, SimPO gamma 0.7, an NLL weight of 0.7, answers of
different lengths, margins in the reward data.

Mutations each of these tests catches (applied by hand, see the issue 19 note): chosen and rejected
swapped, beta doubled, the loss options dropped, the NLL term subtracted; SFT with a per-sequence
mean or a sign-flipped eval loss; the reward model without its margin or centering term.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from preftune.config import DPOConfig, RMConfig, SFTConfig, resolve_config
from preftune.data.formats import read_pairs
from preftune.data.tokenize import PairTokenizer
from preftune.models.reward_model import from_causal_lm
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics
from preftune.train import common
from preftune.train.dpo import train_dpo
from preftune.train.reward import train_reward_model
from preftune.train.sft import train_sft

STEPS, LR, MAX_NORM = 3, 1e-2, 1.0
ROWS = [  # answers of different lengths, so per-token and per-sequence means differ
    {"prompt": "Why is the sky blue?", "chosen": "Light scatters.", "rejected": "No idea at all, sorry about that.", "margin": 1.5},
    {"prompt": "What is a magnet?", "chosen": "A thing that pulls iron toward itself.", "rejected": "Hi.", "margin": 0.5},
    {"prompt": "Say thanks.", "chosen": "Thank you very much!", "rejected": "Go away.", "margin": 2.0},
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oracle")
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed=0).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder, data


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "reference_cache_dir", lambda: tmp_path / "refcache")


def token_pairs(model_dir, data):
    tokenizer = tiny_tokenizer()
    pairs, _ = read_pairs(data)
    return PairTokenizer(tokenizer, max_length=256, max_prompt_length=128), pairs


def completion_logps(model, prompt_ids, completion_ids):
    """(sum of log p(completion token | everything before it), completion length): one sequence."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(input_ids=ids).logits[0, :-1].float()
    per_token = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return per_token[len(prompt_ids) - 1 :].sum(), len(completion_ids)


def adamw_step(model, optimizer, step):
    """Clip to MAX_NORM, set the linear-decay lr for this step (no warmup), step, zero."""
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], MAX_NORM)
    for group in optimizer.param_groups:
        group["lr"] = LR * (1 - step / STEPS)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def assert_same_run(out, oracle_losses, oracle_model, weights_file="model.safetensors", atol=2e-4):
    logged = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert logged == pytest.approx(oracle_losses, rel=2e-5, abs=2e-5)
    ours = load_file(str(out / "final" / weights_file))
    theirs = {k: v.detach() for k, v in oracle_model.state_dict().items()}
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], atol=atol, rtol=0, msg=name)


# ---- DPO ------------------------------------------------------------------------------------

BETA = 0.2


def dpo_loss_written_out(loss, beta, pc, pr, rc, rr, lc, lr, options):
    """The papers' formulas, per pair; h is the DPO reference code's reference-adjusted margin."""
    h = (pc - rc) - (pr - rr)
    eps = options.get("label_smoothing", 0.0)
    if loss == "sigmoid":
        return -F.logsigmoid(beta * h)
    if loss == "cdpo":  # Mitchell 2023: soft labels (1 - eps, eps)
        return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    if loss == "robust":  # Chowdhury et al. 2024: unbiased under flip rate eps
        return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    if loss == "ipo":  # Azar et al. 2023, with TRL's per-token log-ratios when length-normalised
        if options.get("length_normalize"):
            h = (pc - rc) / lc - (pr - rr) / lr
        return (h - 1 / (2 * beta)) ** 2
    if loss == "hinge":  # SLiC on the reference-adjusted margin
        return torch.relu(1 - beta * h)
    if loss == "simpo":  # Meng et al. 2024: reference-free, length-normalised, target gap gamma
        return -F.logsigmoid(beta * (pc / lc - pr / lr) - options["gamma"])
    raise AssertionError(loss)


def dpo_oracle(model_dir, data, loss, beta, options, sft_weight):
    pair_tokenizer, pairs = token_pairs(model_dir, data)
    tokens = [pair_tokenizer(p) for p in pairs]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():  # the reference is the model as loaded
        reference = [(completion_logps(model, t.prompt_ids, t.chosen_ids)[0],
                      completion_logps(model, t.prompt_ids, t.rejected_ids)[0]) for t in tokens]  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses = []
    for step in range(STEPS):
        per_pair, chosen_sum, chosen_tokens = [], 0.0, 0
        for t, (rc, rr) in zip(tokens, reference, strict=True):
            pc, lc = completion_logps(model, t.prompt_ids, t.chosen_ids)
            pr, lr = completion_logps(model, t.prompt_ids, t.rejected_ids)
            per_pair.append(dpo_loss_written_out(loss, beta, pc, pr, rc, rr, lc, lr, options))
            chosen_sum, chosen_tokens = chosen_sum + pc, chosen_tokens + lc
        total = torch.stack(per_pair).mean()
        if sft_weight:  # RPO: NLL of the chosen answers, one mean over all their tokens
            total = total + sft_weight * (-chosen_sum / chosen_tokens)
        total.backward()
        losses.append(float(total))
        adamw_step(model, optimizer, step)
    return losses, model


DPO_CASES = [
    ("sigmoid", {}, 0.0),
    ("sigmoid", {}, 0.7),
    ("cdpo", {"label_smoothing": 0.2}, 0.0),
    ("robust", {"label_smoothing": 0.2}, 0.0),
    ("ipo", {"length_normalize": False}, 0.0),
    ("ipo", {"length_normalize": True}, 0.0),
    ("hinge", {}, 0.0),
    ("simpo", {"gamma": 0.7}, 0.0),
]


@pytest.mark.parametrize("loss, options, sft_weight", DPO_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in DPO_CASES])
def test_dpo_matches_an_independent_loop(files, tmp_path, loss, options, sft_weight):
    folder, data = files
    beta = 2.0 if loss == "simpo" else BETA  # SimPO's beta is per-token, so larger (its paper: 2-10)
    settings = dict(model=str(folder / "model"), data=str(data), out=str(tmp_path / "run"), batch_size=len(ROWS),
                    max_steps=STEPS, lr=LR, beta=beta, loss=loss, sft_weight=sft_weight, max_length=256,
                    max_prompt_length=128, **options)  # fmt: skip
    out = train_dpo(resolve_config(DPOConfig, None, settings), show_progress=False)
    losses, model = dpo_oracle(folder / "model", data, loss, beta, options, sft_weight)
    assert_same_run(out, losses, model)


# ---- SFT ------------------------------------------------------------------------------------


def test_sft_matches_an_independent_loop(files, tmp_path):
    """Loss: the NLL of every response token of the batch, one mean over all of them (long answers
    weigh more than in a mean of per-answer means); eval loss: the same on held-out rows, > 0."""
    folder, data = files
    settings = dict(model=str(folder / "model"), data=str(data), eval_data=str(data), out=str(tmp_path / "run"),
                    batch_size=len(ROWS), max_steps=STEPS, lr=LR, max_length=256, max_prompt_length=128)  # fmt: skip
    out = train_sft(resolve_config(SFTConfig, None, settings), show_progress=False)

    pair_tokenizer, pairs = token_pairs(folder / "model", data)
    examples = [pair_tokenizer.encode_example(p.prompt, p.chosen)[:2] for p in pairs]
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def token_mean_nll():
        sums = [completion_logps(model, prompt, response) for prompt, response in examples]
        return -sum(s for s, _ in sums) / sum(n for _, n in sums)

    losses = []
    for step in range(STEPS):
        loss = token_mean_nll()
        loss.backward()
        losses.append(float(loss))
        adamw_step(model, optimizer, step)
    assert_same_run(out, losses, model)
    with torch.no_grad():
        eval_loss = float(token_mean_nll())
    logged_eval = [r["eval/loss"] for r in read_metrics(out) if "eval/loss" in r]
    assert eval_loss > 0 and logged_eval[-1] == pytest.approx(eval_loss, abs=2e-5)


# ---- reward model -----------------------------------------------------------------------------


def test_reward_model_matches_an_independent_loop(files, tmp_path):
    """Reward at the last token of prompt + answer; loss -log sigmoid(r_c - r_r - margin) plus
    center_coef (r_c + r_r)^2 (Llama 2's margin, Eisenstein et al.'s centering)."""
    folder, data = files
    center = 0.05
    settings = dict(model=str(folder / "model"), data=str(data), out=str(tmp_path / "run"), batch_size=len(ROWS),
                    max_steps=STEPS, lr=LR, center_coef=center, max_length=256, max_prompt_length=128)  # fmt: skip
    out = train_reward_model(resolve_config(RMConfig, None, settings), show_progress=False)

    pair_tokenizer, pairs = token_pairs(folder / "model", data)
    tokens = [pair_tokenizer(p) for p in pairs]
    model, _ = from_causal_lm(str(folder / "model"), seed=0)  # trunk + seeded head, as the trainer builds it
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def reward(ids):
        ids = torch.tensor([ids])
        return model(ids, torch.ones_like(ids))[0, -1]

    losses = []
    for step in range(STEPS):
        per_pair = []
        for t, row in zip(tokens, ROWS, strict=True):
            chosen, rejected = reward(t.prompt_ids + t.chosen_ids), reward(t.prompt_ids + t.rejected_ids)
            per_pair.append(-F.logsigmoid(chosen - rejected - row["margin"]) + center * (chosen + rejected) ** 2)
        loss = torch.stack(per_pair).mean()
        loss.backward()
        losses.append(float(loss))
        adamw_step(model, optimizer, step)
    logged = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert logged == pytest.approx(losses, abs=2e-5)
    final = load_file(str(out / "final" / "model.safetensors"))  # transformers' sequence-classification layout
    torch.testing.assert_close(final["score.weight"], model.head.weight.detach(), atol=2e-4, rtol=0)

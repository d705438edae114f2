"""`preftune grpo` against TRL 1.16's GRPOTrainer on a tiny model: losses, metrics and weights.

How the comparison is set up. Sampling is the one part the two cannot share (different engines,
different random streams), so both are fed the same fixed completions: TRL through its
`rollout_func` hook, preftune by replacing `generate_completions`. Each completion is a seeded
token sequence keyed by (step, prompt, index in the group), of different lengths, some closed by
EOS; the prompt ids are ours in both, and the prompts have the same token length, so TRL's left
padding (positions from the mask are not passed to the model there) cannot shift positions.
The reward is a function of the decoded text, which both decode with skip_special_tokens.

Both run fp32 on CPU, constant learning rate, AdamW, gradient clipping at 1, one optimizer step per
rollout (TRL: num_iterations=1, steps_per_generation=1; ours: --ppo-epochs 1, one minibatch),
beta 0.3 with TRL's plain k3 KL in the loss (`use_bias_correction_kl=False`: TRL's default
multiplies the KL by the importance ratio, which moves the gradient; the paper's eq. 3 does not).
Step 1 is on-policy with policy == reference (KL 0); step 2 sees the KL and new advantages.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import GRPOConfig, resolve_config
from preftune.data.schema import Message
from preftune.data.tokenize import PairTokenizer
from preftune.generate import Generations
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics
from preftune.train import rollout as rollout_module
from preftune.train.grpo import train_grpo

trl = pytest.importorskip("trl", reason="TRL is the oracle; install the [bench] extra")

PROMPTS = ["Tell me about rain.", "Tell me about bees."]
GROUP, NEW_TOKENS, BETA, LR, STEPS = 3, 6, 0.3, 2e-2, 2
COMPARED = ["loss", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "clip_ratio/region_mean",
            "completions/mean_length"]  # fmt: skip


def reward(prompt: str, response: str) -> float:
    return float(response.count("e") + response.count("a")) - 0.2 * len(response)


def completion_for(step: int, prompt: str, index: int, tokenizer) -> list[int]:
    generator = torch.Generator().manual_seed(hash((step, PROMPTS.index(prompt), index)) % 2**31)
    length = int(torch.randint(2, NEW_TOKENS + 1, (1,), generator=generator))
    ids = torch.randint(5, tokenizer.vocab_size, (length,), generator=generator).tolist()
    if index != 1:  # the middle one of each group is cut at its length (no EOS)
        ids[-1] = tokenizer.eos_token_id
    return ids


def prompt_ids_of(tokenizer, text: str) -> list[int]:
    return PairTokenizer(tokenizer, max_length=512 + NEW_TOKENS, max_prompt_length=512).encode_prompt([Message("user", text)])[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo-trl") / "model"
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    lengths = {len(prompt_ids_of(tokenizer, p)) for p in PROMPTS}
    assert len(lengths) == 1, "the prompts must tokenize to the same length (see the module note)"
    return folder


def run_trl(model_dir, out, loss_type):
    from datasets import Dataset
    from transformers import AutoTokenizer

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def rollout_func(prompts, trainer):
        step, seen, rows = trainer.state.global_step, {}, []
        for prompt in prompts:  # each prompt GROUP times in a row (TRL's RepeatSampler)
            index = seen.get(prompt, 0)
            seen[prompt] = index + 1
            rows.append(completion_for(step, prompt, index, tokenizer))
        return {"prompt_ids": [prompt_ids_of(tokenizer, p) for p in prompts], "completion_ids": rows, "logprobs": None}

    def text_reward(prompts, completions, **_):
        return [reward(p, c) for p, c in zip(prompts, completions, strict=True)]

    args = trl.GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=len(PROMPTS) * GROUP, num_generations=GROUP,
        max_completion_length=NEW_TOKENS, beta=BETA, loss_type=loss_type,
        scale_rewards="group" if loss_type == "grpo" else "none", learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=STEPS, num_iterations=1,
        gradient_accumulation_steps=1, steps_per_generation=1, temperature=1.0, epsilon=0.2,
        use_bias_correction_kl=False, disable_dropout=True, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0,
        optim="adamw_torch", model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip
    trainer = trl.GRPOTrainer(model=str(model_dir), reward_funcs=[text_reward], args=args,
                              train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=tokenizer,
                              rollout_func=rollout_func)  # fmt: skip
    trainer.train()
    rows = [r for r in trainer.state.log_history if "reward" in r]
    return rows, {k: v.detach().float() for k, v in trainer.model.state_dict().items()}


def run_ours(model_dir, tmp_path, monkeypatch, loss):
    tokenizer = tiny_tokenizer()
    calls = []

    def fixed(model, tok, prompts, n=1, **_):
        texts = [m[-1].content for m in prompts]
        step = len(calls)
        calls.append(texts)
        completions = [[completion_for(step, t, j, tokenizer) for j in range(n)] for t in texts]
        return Generations(
            [[tokenizer.decode(c, skip_special_tokens=True) for c in per] for per in completions],
            [prompt_ids_of(tokenizer, t) for t in texts], completions, 0, 0.0,
            [[[0.0] * len(c) for c in per] for per in completions],
            [[c[-1] == tokenizer.eos_token_id for c in per] for per in completions], "fixed",
        )  # fmt: skip

    monkeypatch.setattr(rollout_module, "generate_completions", fixed)
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    settings = dict(model=str(model_dir), prompts=str(prompts_file), reward="unused", out=str(tmp_path / "ours"),
                    iterations=STEPS, prompts_per_iteration=len(PROMPTS), num_generations=GROUP,
                    batch_size=len(PROMPTS) * GROUP, max_new_tokens=NEW_TOKENS, lr=LR, scheduler="constant",
                    loss=loss, advantage="group", kl_in="loss", kl_coef=BETA, kl_estimator="k3", clip_range=0.2,
                    precision="fp32", device="cpu", seed=0)  # fmt: skip
    out = train_grpo(resolve_config(GRPOConfig, None, settings), reward_fn=reward, show_progress=False)
    assert len(calls) == STEPS
    return [r for r in read_metrics(out) if "reward" in r], load_file(str(out / "final" / "model.safetensors"))


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo"])
def test_grpo_matches_trl_grpo_trainer(model_dir, tmp_path, monkeypatch, loss):
    torch.set_num_threads(1)
    theirs, their_weights = run_trl(model_dir, tmp_path / "trl", loss)
    ours, our_weights = run_ours(model_dir, tmp_path, monkeypatch, loss)
    assert len(theirs) == len(ours) == STEPS
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        for name in COMPARED:
            assert a[name] == pytest.approx(b[name], abs=1e-4), f"step {step} {name}: ours {a[name]} TRL {b[name]}"
    assert ours[1]["kl"] > 1e-4  # step 2 really compared a KL term (step 1 is on the reference)
    if loss == "dr_grpo":  # completions of different lengths: Dr. GRPO's step-1 loss is not 0
        assert abs(ours[0]["loss"]) > 1e-3
    for name, tensor in our_weights.items():
        torch.testing.assert_close(tensor, their_weights[name], atol=1e-4, rtol=0, msg=name)

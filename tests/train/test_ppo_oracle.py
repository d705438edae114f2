"""The PPO loop against an independent minimal loop written here, compared after 3 iterations.

Sampling is made deterministic (top-k 1: greedy), so the oracle decodes by itself, one sequence
at a time, with no padding and no KV cache. It then writes out the rest from the papers: per-token
k1 KL penalty with the score on the last token (Ziegler et al. 2019), GAE (Schulman et al. 2016),
advantage whitening, the clipped policy and value losses (Schulman et al. 2017) as masked means
over every response token, AdamW with clipping, and the adaptive KL controller fed the measured KL.
Only the value model's construction (trunk + seeded head, `from_causal_lm`) is shared.

The settings tell variants apart: gamma 0.9 and lambda 0.6 (swapping them changes the TD errors),
a KL target equal to the initial coefficient (a controller fed the coefficient would hold still,
one fed the KL of 0 at the first iteration moves), two PPO epochs (the second one clips).
Mutations this test catches (applied by hand, see the issue 19 note): the controller fed the
coefficient instead of the KL; gamma and lambda swapped; no whitening; values read a column late.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from preftune.config import PPOConfig, resolve_config
from preftune.data.schema import Message
from preftune.data.tokenize import PairTokenizer
from preftune.models.reward_model import from_causal_lm
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics
from preftune.train.ppo import train_ppo

PROMPTS = ["Tell me about rain.", "Tell me about bees.", "Say something nice.", "What is bread?"]
ITERATIONS, PPO_EPOCHS, LR, MAX_NORM, NEW_TOKENS = 3, 2, 3e-3, 1.0, 6
GAMMA, LAM, KL_COEF, TARGET_KL, HORIZON, CLIP, CLIP_VALUE, VF_COEF = 0.9, 0.6, 0.3, 0.3, 10.0, 0.2, 0.2, 0.1


def score(prompt: str, response: str) -> float:
    return float(response.count("e")) - 0.1 * len(response)


def greedy(model, prompt_ids, eos_id):
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            next_id = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(next_id)
            if next_id == eos_id:
                break
    return ids[len(prompt_ids) :]


def token_logprobs_of(model, prompt_ids, completion):
    ids = torch.tensor([prompt_ids + completion])
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def values_of(value_model, prompt_ids, completion):
    """V(s_t) for each action t: the value at the position just before the token is generated."""
    ids = torch.tensor([prompt_ids + completion])
    return value_model(ids, torch.ones_like(ids))[0, len(prompt_ids) - 1 : -1]


def gae_written_out(rewards, values):
    """delta_t = r_t + gamma V_{t+1} - V_t (V = 0 past the end); A_t = delta_t + gamma lambda A_{t+1}."""
    advantages, next_advantage = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + GAMMA * next_value - values[t]
        next_advantage = delta + GAMMA * LAM * next_advantage
        advantages[t] = next_advantage
    return torch.stack([torch.as_tensor(a) for a in advantages])


def ppo_oracle(model_dir):
    tokenizer = tiny_tokenizer()
    prompt_tokenizer = PairTokenizer(tokenizer, max_length=512 + NEW_TOKENS, max_prompt_length=512)
    prompts = [prompt_tokenizer.encode_prompt([Message("user", p)])[0] for p in PROMPTS]
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)
    value_model, _ = from_causal_lm(str(model_dir), seed=0)
    value_model.eval()
    parameters = list(policy.parameters()) + list(value_model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=LR, weight_decay=0.0)
    kl_coef, logged = KL_COEF, []
    for iteration in range(ITERATIONS):
        completions = [greedy(policy, p, tokenizer.eos_token_id) for p in prompts]
        scores = [score(text, tokenizer.decode(c, skip_special_tokens=True)) for text, c in zip(PROMPTS, completions, strict=True)]
        with torch.no_grad():
            old = [token_logprobs_of(policy, p, c) for p, c in zip(prompts, completions, strict=True)]
            ref = [token_logprobs_of(reference, p, c) for p, c in zip(prompts, completions, strict=True)]
            old_values = [values_of(value_model, p, c) for p, c in zip(prompts, completions, strict=True)]
            kls = [o - r for o, r in zip(old, ref, strict=True)]  # k1 per token
            advantages, returns = [], []
            for kl, s, v in zip(kls, scores, old_values, strict=True):
                rewards = -kl_coef * kl
                rewards[-1] += s  # the score lands on the last action
                a = gae_written_out(list(rewards), list(v))
                advantages.append(a)
                returns.append(a + v)
            flat = torch.cat(advantages)  # whitened over every response token of the rollout
            mean, var = flat.mean(), flat.var(unbiased=True)
            advantages = [(a - mean) / torch.sqrt(var + 1e-8) for a in advantages]
        mean_kl = float(torch.stack([k.sum() for k in kls]).mean())
        policy_losses, value_losses = [], []
        for _ in range(PPO_EPOCHS):
            policy_terms, value_terms = [], []
            for p, c, o, a, v_old, ret in zip(prompts, completions, old, advantages, old_values, returns, strict=True):
                ratio = torch.exp(token_logprobs_of(policy, p, c) - o)
                policy_terms.append(torch.maximum(-a * ratio, -a * ratio.clamp(1 - CLIP, 1 + CLIP)))
                v = values_of(value_model, p, c)
                v_clipped = v_old + (v - v_old).clamp(-CLIP_VALUE, CLIP_VALUE)
                value_terms.append(torch.maximum((v - ret) ** 2, (v_clipped - ret) ** 2))
            policy_loss = torch.cat(policy_terms).mean()  # a mean over tokens, not over sequences
            value_loss = 0.5 * torch.cat(value_terms).mean()
            (policy_loss + VF_COEF * value_loss).backward()
            torch.nn.utils.clip_grad_norm_([q for q in parameters if q.grad is not None], MAX_NORM)
            for group in optimizer.param_groups:
                group["lr"] = LR * (1 - iteration / ITERATIONS)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            policy_losses.append(float(policy_loss))
            value_losses.append(float(value_loss))
        logged.append({"objective/kl": mean_kl, "objective/scores": sum(scores) / len(scores), "kl_coef": kl_coef,
                       "loss/policy_avg": sum(policy_losses) / PPO_EPOCHS, "loss/value_avg": sum(value_losses) / PPO_EPOCHS})  # fmt: skip
        # Adaptive controller (Ziegler et al. 2019), fed the KL it measured, n = completions.
        error = min(max(mean_kl / TARGET_KL - 1, -0.2), 0.2)
        kl_coef *= 1 + error * len(PROMPTS) / HORIZON
    return logged, policy


def test_ppo_matches_an_independent_loop(tmp_path):
    tokenizer = tiny_tokenizer()
    model_dir = tmp_path / "model"
    tiny_model(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    settings = dict(model=str(model_dir), prompts=str(prompts_file), reward="unused", out=str(tmp_path / "run"),
                    iterations=ITERATIONS, rollout_batch=len(PROMPTS), batch_size=len(PROMPTS), ppo_epochs=PPO_EPOCHS,
                    max_new_tokens=NEW_TOKENS, top_k=1, lr=LR, gamma=GAMMA, lam=LAM, kl_coef=KL_COEF,
                    target_kl=TARGET_KL, kl_horizon=HORIZON, vf_coef=VF_COEF, value="separate", seed=0)  # fmt: skip
    out = train_ppo(resolve_config(PPOConfig, None, settings), reward_fn=score, show_progress=False)
    expected, oracle_policy = ppo_oracle(model_dir)

    rows = [r for r in read_metrics(out) if "objective/kl" in r]
    assert len(rows) == ITERATIONS
    for iteration, (row, oracle) in enumerate(zip(rows, expected, strict=True), start=1):
        for name, value in oracle.items():
            assert row[name] == pytest.approx(value, rel=1e-4, abs=1e-5), f"iteration {iteration} {name}"
    assert abs(rows[-1]["objective/kl"]) > 1e-2  # the policy moved, so the comparison saw real updates
    ours = load_file(str(out / "final" / "model.safetensors"))
    theirs = oracle_policy.state_dict()
    for name, tensor in ours.items():  # (a tied lm_head is saved once, as the embedding)
        # Where a gradient is within fp32 summation noise of zero, Adam's step (about lr x its sign)
        # can differ between the two loops, and CPUs order their sums differently: so all but a few
        # weights must agree to 2e-4, and none by more than those steps could move it.
        diff = (tensor - theirs[name].detach()).abs()
        assert (diff > 2e-4).float().mean() < 1e-3 and diff.max() <= 2 * LR * ITERATIONS * PPO_EPOCHS, name

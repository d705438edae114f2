"""The grpo and online-dpo loops against independent minimal loops written here, compared after 3
iterations.

The rollout is fixed: `generate_completions` is replaced by a function that returns seeded token
sequences of different lengths (some closed by EOS, some cut), the same ones the oracle reads. So
the comparison covers everything after sampling: the layout, scoring, the KL to a frozen
reference, each advantage estimator, each loss normalisation, the clip, AdamW and clipping.

The oracle shares nothing with the trainer but the tokenizer: it runs one plain forward per
sequence (no padding), writes each advantage out from its paper with `statistics`, and sums the
losses by hand. Settings tell variants apart: rewards spread within groups, completions of
different lengths (so "sequence", "token" and "constant" normalisations differ), kl_coef 0.3,
gamma 0.9 for REINFORCE++, two epochs in one case (the second is off-policy and clips).
Measured gaps after 3 steps (max |weight difference|, lr 3e-3): 3e-6 to 7e-6, except RLOO with the
KL in the reward at 3.5e-5: there the fp32 log-prob differences between a padded batch and single
sequences (about 1e-6) enter the advantages through the penalty, and AdamW's per-parameter
normalisation enlarges them where gradients nearly cancel (a group's advantages sum to 0).

Online DPO's oracle ranks each pair with the same reward, sums completion log-probs itself and
writes the DPO loss out (Rafailov et al. 2023, eq. 7).

Two tests check that the comparisons can fail: an oracle with policy and reference swapped in the
KL, and one with chosen and rejected swapped, are each told apart from the trainer.
"""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from preftune.config import GRPOConfig, OnlineDPOConfig, resolve_config
from preftune.data.tokenize import PairTokenizer
from preftune.generate import Generations
from preftune.models.tiny import tiny_model, tiny_tokenizer
from preftune.runlog import read_metrics
from preftune.train import rollout as rollout_module
from preftune.train.grpo import train_grpo
from preftune.train.online_dpo import train_online_dpo

PROMPTS = ["Tell me about rain.", "Say something nice.", "What is bread?"]
ITERATIONS, GROUP, LR, MAX_NORM, NEW_TOKENS, KL_COEF, CLIP = 3, 3, 3e-3, 1.0, 6, 0.3, 0.2


def reward(prompt: str, response: str) -> float:
    return float(response.count("e") + response.count("a")) - 0.2 * len(response)


class FixedRollouts:
    """Stands in for `generate_completions`: per call, GROUP seeded completions per prompt."""

    def __init__(self):
        self.calls: list[tuple[list[list[int]], list[list[list[int]]]]] = []

    def __call__(self, model, tokenizer, prompts, n=1, *, max_new_tokens, max_prompt_length, **_):
        pair_tokenizer = PairTokenizer(tokenizer, max_length=max_prompt_length + max_new_tokens, max_prompt_length=max_prompt_length)
        prompt_ids = [pair_tokenizer.encode_prompt(m)[0] for m in prompts]
        generator = torch.Generator().manual_seed(1000 + len(self.calls))
        completions, finished = [], []
        for _ in prompts:
            rows, done = [], []
            for _ in range(n):
                length = int(torch.randint(2, max_new_tokens + 1, (1,), generator=generator))
                ids = torch.randint(5, tokenizer.vocab_size, (length,), generator=generator).tolist()
                ended = bool(torch.rand((), generator=generator) < 0.6)
                if ended:
                    ids[-1] = tokenizer.eos_token_id
                rows.append(ids)
                done.append(ended)
            completions.append(rows)
            finished.append(done)
        self.calls.append((prompt_ids, completions))
        texts = [[tokenizer.decode(c, skip_special_tokens=True) for c in per] for per in completions]
        logprobs = [[[0.0] * len(c) for c in per] for per in completions]
        return Generations(texts, prompt_ids, completions, sum(len(c) for per in completions for c in per), 0.0,
                           logprobs, finished, "fixed")  # fmt: skip


def token_logprobs_of(model, prompt_ids, completion):
    ids = torch.tensor([prompt_ids + completion])
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def advantages_written_out(kind, loss, scores, kls_in_reward, gamma):
    """Per completion (a list of per-token tensors for reinforce_pp), from the papers."""
    if kind == "reinforce_pp":  # Hu 2025: r_t = -beta kl_t, + score at the end; return-to-go; batch whitening
        returns = []
        for score, kl in zip(scores, kls_in_reward, strict=True):
            rewards = [-KL_COEF * float(k) for k in kl]
            rewards[-1] += score
            to_go, running = [], 0.0
            for r in reversed(rewards):
                running = r + gamma * running
                to_go.insert(0, running)
            returns.append(to_go)
        flat = [g for row in returns for g in row]
        mean, std = statistics.fmean(flat), statistics.stdev(flat)
        return [torch.tensor([(g - mean) / math.sqrt(std**2 + 1e-8) for g in row]) for row in returns]
    penalised = [s - KL_COEF * float(kl.sum()) if kls_in_reward else s for s, kl in zip(scores, kls_in_reward or scores, strict=True)]  # fmt: skip
    out = []
    for g in range(0, len(penalised), GROUP):
        group = penalised[g : g + GROUP]
        mean = statistics.fmean(group)
        for r in group:
            if kind == "rloo":  # Ahmadian et al. 2024: the mean of the other G - 1
                out.append(r - (sum(group) - r) / (GROUP - 1))
            elif loss == "grpo":  # Shao et al. 2024, with TRL's std + 1e-4
                out.append((r - mean) / (statistics.stdev(group) + 1e-4))
            else:  # Dr. GRPO: no std
                out.append(r - mean)
    return [torch.tensor(a) for a in out]


def grpo_oracle(model_dir, rollouts, loss, advantage, kl_in, epochs, gamma, estimator, swap=False):
    tokenizer = tiny_tokenizer()
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)

    def kl_of(p, q):  # per token, KL(policy || reference) estimated at the sampled tokens
        if swap:  # the mutation: the reference's log-probs where the policy's belong, and back
            p, q = q, p
        return p - q if estimator == "k1" else torch.exp(q - p) - (q - p) - 1

    for iteration in range(ITERATIONS):
        prompt_ids, completions = rollouts.calls[iteration]
        rows = [(p, c) for p, per in zip(prompt_ids, completions, strict=True) for c in per]
        texts = [tokenizer.decode(c, skip_special_tokens=True) for _, c in rows]
        scores = [reward("", t) for t in texts]
        with torch.no_grad():
            old = [token_logprobs_of(policy, p, c) for p, c in rows]
            ref = [token_logprobs_of(reference, p, c) for p, c in rows]
        kls_in_reward = [kl_of(o, r) for o, r in zip(old, ref, strict=True)] if kl_in == "reward" else None
        advantages = advantages_written_out(advantage, loss, scores, kls_in_reward, gamma)
        for _ in range(epochs):
            per_sequence, token_sum, token_count = [], 0.0, 0
            for (p, c), o, r, a in zip(rows, old, ref, advantages, strict=True):
                new = token_logprobs_of(policy, p, c)
                ratio = torch.exp(new - o)
                term = -torch.minimum(ratio * a, ratio.clamp(1 - CLIP, 1 + CLIP) * a)
                if kl_in == "loss":
                    term = term + KL_COEF * kl_of(new, r)
                per_sequence.append(term.mean())
                token_sum, token_count = token_sum + term.sum(), token_count + len(c)
            if loss == "grpo":
                total = torch.stack(per_sequence).mean()
            else:  # Dr. GRPO: a constant divisor, completions x max new tokens
                total = token_sum / (len(rows) * NEW_TOKENS)
            total.backward()
            torch.nn.utils.clip_grad_norm_(list(policy.parameters()), MAX_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return policy


CASES = {  # loss, advantage, kl_in, epochs, gamma, estimator
    "grpo-group-kl_in_loss": ("grpo", "group", "loss", 1, 1.0, "k3"),
    "dr_grpo-group-kl_in_loss-2_epochs": ("dr_grpo", "group", "loss", 2, 1.0, "k3"),
    "grpo-rloo-kl_in_reward": ("grpo", "rloo", "reward", 1, 1.0, "k1"),
    "grpo-reinforce_pp-kl_in_reward": ("grpo", "reinforce_pp", "reward", 1, 0.9, "k1"),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo-oracle") / "model"
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_trainer(model_dir, tmp_path, monkeypatch, loss, advantage, kl_in, epochs, gamma, estimator):
    rollouts = FixedRollouts()
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(rollout_module, "generate_completions", rollouts)
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    settings = dict(model=str(model_dir), prompts=str(prompts_file), reward="unused", out=str(tmp_path / "run"),
                    iterations=ITERATIONS, prompts_per_iteration=len(PROMPTS), num_generations=GROUP,
                    batch_size=len(PROMPTS) * GROUP, ppo_epochs=epochs, max_new_tokens=NEW_TOKENS, lr=LR,
                    scheduler="constant", loss=loss, advantage=advantage, kl_in=kl_in, kl_coef=KL_COEF,
                    kl_estimator=estimator, gamma=gamma, clip_range=CLIP, precision="fp32", device="cpu", seed=0)  # fmt: skip
    out = train_grpo(resolve_config(GRPOConfig, None, settings), reward_fn=reward, show_progress=False)
    return out, rollouts


def weight_gap(out, oracle_policy) -> float:
    ours = load_file(str(out / "final" / "model.safetensors"))
    theirs = oracle_policy.state_dict()
    return max(float((tensor - theirs[name].detach()).abs().max()) for name, tensor in ours.items())


@pytest.mark.parametrize("case", list(CASES))
def test_grpo_matches_an_independent_loop(model_dir, tmp_path, monkeypatch, case):
    torch.set_num_threads(1)
    out, rollouts = run_trainer(model_dir, tmp_path, monkeypatch, *CASES[case])
    assert len(rollouts.calls) == ITERATIONS  # no evaluation here: every call was a training rollout
    oracle = grpo_oracle(model_dir, rollouts, *CASES[case])
    assert weight_gap(out, oracle) < 1e-4
    rows = [r for r in read_metrics(out) if "reward" in r]
    assert len(rows) == ITERATIONS
    expected_rewards = []
    tokenizer = tiny_tokenizer()
    for _, completions in rollouts.calls:
        texts = [tokenizer.decode(c, skip_special_tokens=True) for per in completions for c in per]
        expected_rewards.append(statistics.fmean(reward("", t) for t in texts))
    assert [r["reward"] for r in rows] == pytest.approx(expected_rewards, rel=1e-5)
    assert rows[-1]["objective/kl"] != 0.0  # the policy moved away from the reference


def test_the_comparison_fails_when_policy_and_reference_are_swapped(model_dir, tmp_path, monkeypatch):
    """The KL with policy and reference exchanged: with k1 in the reward its sign flips, with k3 in
    the loss its gradient changes at second order; the oracle must tell both apart by far more than
    the 1e-4 it allows a match."""
    for case in ("grpo-rloo-kl_in_reward", "grpo-group-kl_in_loss"):
        out, rollouts = run_trainer(model_dir, tmp_path / case, monkeypatch, *CASES[case])
        assert weight_gap(out, grpo_oracle(model_dir, rollouts, *CASES[case])) < 1e-4
        assert weight_gap(out, grpo_oracle(model_dir, rollouts, *CASES[case], swap=True)) > 1e-3, case


# ---- online DPO ---------------------------------------------------------------------------------

DPO_BETA = 0.2


def online_dpo_oracle(model_dir, rollouts, swap=False):
    tokenizer = tiny_tokenizer()
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    losses, ties = [], []
    for iteration in range(ITERATIONS):
        prompt_ids, completions = rollouts.calls[iteration]
        terms = []
        for p, (a, b) in zip(prompt_ids, completions, strict=True):
            score_a, score_b = (reward("", tokenizer.decode(c, skip_special_tokens=True)) for c in (a, b))
            if score_a == score_b:  # a tie says nothing: the pair is dropped
                continue
            chosen, rejected = (a, b) if score_a > score_b else (b, a)
            if swap:  # the mutation: the loser taught as the winner
                chosen, rejected = rejected, chosen
            pc, pr = token_logprobs_of(policy, p, chosen).sum(), token_logprobs_of(policy, p, rejected).sum()
            with torch.no_grad():
                rc, rr = token_logprobs_of(reference, p, chosen).sum(), token_logprobs_of(reference, p, rejected).sum()
            terms.append(-F.logsigmoid(DPO_BETA * ((pc - rc) - (pr - rr))))
        ties.append(1 - len(terms) / len(prompt_ids))
        loss = torch.stack(terms).mean()
        loss.backward()
        losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(list(policy.parameters()), MAX_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses, ties, policy


def test_online_dpo_matches_an_independent_loop_and_fails_with_chosen_and_rejected_swapped(model_dir, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    rollouts = FixedRollouts()
    monkeypatch.setattr(rollout_module, "generate_completions", rollouts)
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    settings = dict(model=str(model_dir), prompts=str(prompts_file), reward="unused", out=str(tmp_path / "run"),
                    iterations=ITERATIONS, prompts_per_iteration=len(PROMPTS), batch_size=2, max_new_tokens=NEW_TOKENS,
                    lr=LR, scheduler="constant", beta=DPO_BETA, precision="fp32", device="cpu", seed=0)  # fmt: skip
    out = train_online_dpo(resolve_config(OnlineDPOConfig, None, settings), reward_fn=reward, show_progress=False)
    losses, ties, oracle = online_dpo_oracle(model_dir, rollouts)
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["loss"] for r in rows] == pytest.approx(losses, abs=2e-5)
    assert [r["objective/ties"] for r in rows] == pytest.approx(ties) and 0 < sum(ties) < ITERATIONS  # some, not all
    assert weight_gap(out, oracle) < 1e-4
    assert rows[-1]["objective/kl"] != 0.0 and rows[0]["rewards/accuracies"] == 0.0  # step 1: policy == reference
    _, _, swapped = online_dpo_oracle(model_dir, rollouts, swap=True)
    assert weight_gap(out, swapped) > 1e-3

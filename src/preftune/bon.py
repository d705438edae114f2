"""Best-of-n: sample n completions per prompt, keep the one the reward scores highest.

The simplest way to spend a reward model, and the yardstick for RL: keeping the best of n moves the
output distribution by exactly (at most, with ties) `best_of_n_kl(n) = log n - (n-1)/n` nats from
the sampling policy, with no training (Stiennon et al. 2020; Gao et al. 2022 use it to chart reward
over-optimisation against KL). `expected_best_of_n` reads the whole curve, n = 1, 2, 4, ...,
off one set of N samples per prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import BoNConfig, ConfigError
from .data.schema import Message
from .generate import generate_completions
from .losses.kl import best_of_n_kl
from .train.rollout import prompt_text_of, score_responses


def expected_best_of_n(scores: Sequence[float], n: int, gold_scores: Sequence[float] | None = None) -> float:
    """Unbiased estimate, from N >= n i.i.d. samples, of E[score of the best of n fresh samples].

    Sort the samples by score, s_(1) <= ... <= s_(N). A uniformly random n-subset has sample i as
    its best with probability C(i-1, n-1) / C(N, n) (the other n-1 members come from the i-1 below
    it), so the mean over all C(N, n) subsets is sum_i C(i-1, n-1) / C(N, n) * s_(i): exact, no
    resampling. With `gold_scores`, the best is still chosen by `scores` (the proxy) and the
    gold score of the chosen sample is averaged instead (Gao et al. 2022's proxy-vs-gold curves).
    Ties in `scores` go to the earlier sample, as `max` (and so `BestOfN.best`) picks them.
    """
    total = len(scores)
    if not 1 <= n <= total:
        raise ValueError(f"expected_best_of_n needs 1 <= n <= {total} samples, got n={n}")
    values = scores if gold_scores is None else gold_scores
    if len(values) != total:
        raise ValueError(f"{len(values)} gold scores for {total} samples")
    order = sorted(range(total), key=lambda i: (scores[i], -i))
    # Rank r (0-based) is the best of the subset with probability w_r = C(r, n-1) / C(N, n). The
    # binomials overflow a float past N ~ 1030, so walk down from the top rank, w_(N-1) = n / N,
    # with w_(r-1) = w_r (r - n + 1) / r: every weight stays in [0, 1].
    expected, weight = 0.0, n / total
    for rank in range(total - 1, n - 2, -1):
        expected += weight * values[order[rank]]
        weight *= (rank - n + 1) / rank if rank else 0.0
    return expected


@dataclass
class BestOfN:
    """One prompt's n samples, their scores and the index of the kept one."""

    prompt: list[Message]
    completions: list[str]
    scores: list[float]
    gold_scores: list[float] | None = None
    best: int = field(init=False)

    def __post_init__(self):
        self.best = max(range(len(self.scores)), key=self.scores.__getitem__)

    def to_dict(self) -> dict:
        row = {"prompt": prompt_text_of(self.prompt), "response": self.completions[self.best],
               "score": self.scores[self.best], "n": len(self.scores), "scores": self.scores}  # fmt: skip
        if self.gold_scores is not None:
            row["gold_score"] = self.gold_scores[self.best]
        return row


def best_of_n(
    model,
    tokenizer,
    prompts: list[list[Message]],
    reward,
    n: int,
    *,
    gold=None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    max_prompt_length: int = 512,
    show_progress: bool = False,
    rollout_engine: str = "auto",
    precision: str = "auto",
) -> list[BestOfN]:
    """Sample n completions per prompt (seeded, KV cache), score them with `reward` (a registry
    judge or a `(prompt, response) -> float` callable), optionally with a `gold` judge too."""
    result = generate_completions(
        model, tokenizer, prompts, n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        top_k=top_k, seed=seed, batch_size=batch_size, max_prompt_length=max_prompt_length,
        show_progress=show_progress, rollout_engine=rollout_engine, precision=precision,
    )  # fmt: skip
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat_texts = [t for texts in result.texts for t in texts]
    scores = score_responses(reward, flat_prompts, flat_texts)
    gold_scores = score_responses(gold, flat_prompts, flat_texts) if gold is not None else None
    rows = []
    for i, prompt in enumerate(prompts):
        window = slice(i * n, (i + 1) * n)
        rows.append(
            BestOfN(
                prompt,
                result.texts[i],
                scores[window],
                gold_scores[window] if gold_scores is not None else None,
            )
        )
    return rows


def summarize(rows: list[BestOfN]) -> dict:
    """Mean kept score for n and every power of two below it, each beside its KL, from the same samples."""
    n = len(rows[0].scores)
    sizes = sorted({2**k for k in range(int(math.log2(n)) + 1)} | {n})
    by_n = []
    for size in sizes:
        entry = {"n": size, "kl_bound": best_of_n_kl(size),
                 "expected_best_score": sum(expected_best_of_n(r.scores, size) for r in rows) / len(rows)}  # fmt: skip
        if rows[0].gold_scores is not None:
            entry["expected_gold_score"] = sum(
                expected_best_of_n(r.scores, size, r.gold_scores) for r in rows
            ) / len(rows)
        by_n.append(entry)
    summary = {
        "prompts": len(rows),
        "n": n,
        "mean_best_score": sum(r.scores[r.best] for r in rows) / len(rows),
        "mean_score": sum(sum(r.scores) for r in rows) / (n * len(rows)),
        "kl_bound": best_of_n_kl(n),
        "by_n": by_n,
    }
    if rows[0].gold_scores is not None:
        summary["mean_gold_score"] = sum(r.gold_scores[r.best] for r in rows) / len(rows)
    return summary


def run_best_of_n(config: BoNConfig) -> dict:
    """`preftune bon`: load, sample, keep the best, write --out (one JSON line per prompt); the summary."""
    from .data.formats import read_prompts
    from .judges.registry import get_judge
    from .models.load import load_policy
    from .train.common import pick_device

    if config.n < 1:
        raise ConfigError("-n", 0, f"must be at least 1, got {config.n}")
    if config.temperature <= 0:
        raise ConfigError("--temperature", 0, "must be > 0")
    device = pick_device(config.device)
    prompts = read_prompts(config.prompts)
    reward = get_judge(config.reward, device=str(device), batch_size=config.batch_size)
    gold = get_judge(config.gold, device=str(device), batch_size=config.batch_size) if config.gold else None
    model, tokenizer = load_policy(config.model, device=device)
    rows = best_of_n(
        model, tokenizer, prompts, reward, config.n, gold=gold, max_new_tokens=config.max_new_tokens,
        temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, seed=config.seed,
        batch_size=config.batch_size, max_prompt_length=config.max_prompt_length, show_progress=True,
        rollout_engine=config.rollout_engine, precision=config.rollout_precision,
    )  # fmt: skip
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
    return summarize(rows) | {"out": str(out), "reward": config.reward}

"""Active selection against random order: held-out accuracy of a reward model at equal vote counts.

    python bench/active_selection.py [--samples 4] [--seeds 10] [--work /tmp/preftune-active]

1. The demo's data: SmolLM2-135M-Instruct samples `--samples` answers to each of the demo's
   shipped prompts (temperature 1, up to 48 tokens; cached in --work). Every pair of answers to a
   prompt is a candidate item. The demo's held-out prompts (every fifth) give the test pairs.
2. The simulated annotator is the demo's kid judge (reading ease x relevance): it prefers the
   answer it scores higher; near-ties (gap < 0.02, as in the demo) are left out of pool and test.
3. The reward model: Bradley–Terry, linear on frozen all-MiniLM-L6-v2 embeddings of the answer
   (r = w . phi(answer), L2-regularised logistic regression on phi(a) - phi(b)). It is retrained
   from scratch after every batch of votes. (Not `preftune rm`'s SmolLM2 model: retraining that
   a few hundred times per seed is hours of CPU; the selection rule is the same code either way.)
4. Each seed starts from the same 10 random votes for both arms, then adds 10 votes per round:
   "random" draws them at random; "active" takes the order of `preftune.web.active.priority_order`
   over the current model's uncertainty (a quarter of each batch random). Accuracy on the test
   pairs is recorded at every budget. Figures: mean over seeds with a 95% t-interval, and the
   paired difference (active - random, same seed and start) with its own interval.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path

import numpy as np

MAX_NEW_TOKENS = 48
MIN_SCORE_GAP = 0.02  # the demo's near-tie threshold
START, BATCH, BUDGET = 10, 10, 200
L2 = 1.0  # inverse regularisation strength C of the logistic regression


def generate(work: Path, samples: int) -> dict:
    cache = work / f"answers-{samples}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from preftune.data.schema import user_prompt
    from preftune.demo import DEMO_MODEL, demo_prompts
    from preftune.generate import generate_completions
    from preftune.models.load import load_policy

    prompts = demo_prompts()
    policy, tokenizer = load_policy(DEMO_MODEL, seed=0)
    out = generate_completions(policy, tokenizer, [user_prompt(p) for p in prompts], samples,
                               max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, seed=0, batch_size=16)  # fmt: skip
    data = {"prompts": prompts, "answers": out.texts}
    cache.write_text(json.dumps(data))
    return data


def score(work: Path, data: dict, samples: int) -> dict:
    cache = work / f"scores-{samples}.npz"
    if cache.exists():
        found = np.load(cache)
        return {"kid": found["kid"], "phi": found["phi"]}
    from preftune.judges.kid import _embedder, kid_scores

    flat_prompts = [p for p, answers in zip(data["prompts"], data["answers"], strict=True) for _ in answers]
    flat_answers = [a for answers in data["answers"] for a in answers]
    kid = np.array(kid_scores(flat_prompts, flat_answers))
    phi = _embedder().encode(flat_answers, normalize_embeddings=True, batch_size=64)
    np.savez(cache, kid=kid, phi=phi)
    return {"kid": kid, "phi": np.asarray(phi)}


def make_pairs(data: dict, scored: dict, samples: int):
    """(train pairs, test pairs) as arrays of (index of the preferred answer, index of the other)."""
    train, test = [], []
    for p, _prompt in enumerate(data["prompts"]):
        for i, j in itertools.combinations(range(samples), 2):
            a, b = p * samples + i, p * samples + j
            gap = scored["kid"][a] - scored["kid"][b]
            if abs(gap) < MIN_SCORE_GAP or data["answers"][p][i].strip() == data["answers"][p][j].strip():
                continue
            (test if p % 5 == 4 else train).append((a, b) if gap > 0 else (b, a))
    return np.array(train), np.array(test)


def fit(phi: np.ndarray, pairs: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    diff = phi[pairs[:, 0]] - phi[pairs[:, 1]]
    # Both orders, so the model has no side to prefer: y = 1 for (winner - loser), 0 for the reverse.
    model = LogisticRegression(C=L2, fit_intercept=False, max_iter=1000)
    model.fit(np.vstack([diff, -diff]), np.r_[np.ones(len(diff)), np.zeros(len(diff))])
    return model.coef_[0]


def accuracy(weights: np.ndarray, phi: np.ndarray, pairs: np.ndarray) -> float:
    rewards = phi @ weights
    return float(np.mean(rewards[pairs[:, 0]] > rewards[pairs[:, 1]]))


def run_arm(arm: str, phi, train, test, seed: int) -> list[float]:
    from preftune.web.active import priority_order, reward_uncertainty

    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(len(train), START, replace=False))  # the same start for both arms
    curve = []
    while True:
        weights = fit(phi, train[labelled])
        curve.append(accuracy(weights, phi, test))
        if len(labelled) >= min(BUDGET, len(train)):
            return curve
        pool = [i for i in range(len(train)) if i not in set(labelled)]
        if arm == "random":
            batch = list(rng.choice(pool, min(BATCH, len(pool)), replace=False))
        else:
            rewards = phi @ weights
            # The annotator sees the pair unordered: score it by the model's doubt, not by the label.
            scores = {i: reward_uncertainty(rewards[train[i][0]], rewards[train[i][1]]) for i in pool}
            batch = priority_order(scores, seed=seed * 1000 + len(labelled))[:BATCH]
        labelled += batch


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--work", default="/tmp/preftune-active")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = generate(work, args.samples)
    scored = score(work, data, args.samples)
    train, test = make_pairs(data, scored, args.samples)
    print(f"{len(data['prompts'])} prompts x {args.samples} answers: {len(train)} pool pairs, {len(test)} test pairs")
    curves = {arm: [run_arm(arm, scored["phi"], train, test, seed) for seed in range(args.seeds)]
              for arm in ("random", "active")}  # fmt: skip
    full = accuracy(fit(scored["phi"], train), scored["phi"], test)
    print(f"reward model on all {len(train)} pool pairs: held-out accuracy {full:.3f}")
    print("| votes | random | active | active - random (paired) |")
    print("|---|---|---|---|")
    for step, votes in enumerate(range(START, BUDGET + 1, BATCH)):
        if votes not in (10, 20, 40, 60, 80, 100, 150, 200) or step >= len(curves["random"][0]):
            continue
        rand = interval([c[step] for c in curves["random"]])
        act = interval([c[step] for c in curves["active"]])
        diff = interval([a[step] - r[step] for a, r in zip(curves["active"], curves["random"], strict=True)])
        print(f"| {votes} | {rand[0]:.3f} ± {rand[1]:.3f} | {act[0]:.3f} ± {act[1]:.3f} | {diff[0]:+.3f} ± {diff[1]:.3f} |")


if __name__ == "__main__":
    main()

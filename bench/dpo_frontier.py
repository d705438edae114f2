"""The controlled-sentiment reward-KL frontier of DPO and PPO, after Rafailov et al. 2023 (Fig. 2
left), at laptop scale.

    .venv/bin/python bench/dpo_frontier.py [--betas 0.05,0.1,0.5] [--kl-coefs 0.05,0.2]
        [--train-prompts 128] [--samples-per-prompt 3] [--ppo-iterations 24] [--rollout-batch 16]
        [--eval-prompts 64] [--eval-samples 4] [--threads 2] [--out runs/bench-frontier]

Task: continue a movie review from its first 2-8 words (prefixes of
../shared/data/movie_review_snippets.tsv; training prefixes from sentences 0..7999, evaluation
prefixes from the rest). Gold reward: VADER compound of the continuation (`judge:sentiment`).

Policy: SmolLM2-135M-Instruct stands in for the paper's SFT model (no extra SFT step here: it
already writes fluent reviews when asked). Preference data: --samples-per-prompt samples per
training prompt from that policy, each labelled by the gold reward, and every pair of a prompt's
samples as a preference (higher VADER = chosen; exact ties dropped), as in the paper. The label
budget is equal by default: DPO's gold labels (train prompts x samples per prompt, 128 x 3) match
the rewards PPO sees (iterations x rollout batch, 24 x 16), and both counts are in results.json.
DPO (`preftune dpo`, LoRA, precomputed reference) for each beta; PPO (`preftune ppo`, LoRA,
shared value head) rewarded by the gold reward directly, as the paper's PPO-GT, for each fixed KL
coefficient. Each run saves checkpoints along the way.

Every checkpoint (and the starting policy) is evaluated the same way: --eval-samples samples per
evaluation prompt at temperature 1 (seeded alike), mean gold reward, and the Monte-Carlo
sequence-level KL(pi || pi_ref) on those samples (`preftune.eval.kl`). The frontier of a method
is the upper envelope of its points (the best reward reached at or below each KL). The verdict
compares the two envelopes where both are defined: the mean of DPO's envelope minus PPO's over
the KLs where either has a point, with a percentile bootstrap interval over evaluation prompts
(every point's reward and KL recomputed from the same resampled prompts, --bootstrap times).

Everything slow is cached under --out (pairs, runs, evaluations): a rerun only redraws.
Writes results.json and frontier.svg.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "data" / "movie_review_snippets.tsv"
SYSTEM = "You write movie reviews."
INSTRUCTION = 'Continue this movie review in one or two sentences: "{prefix}'
TRAIN_SENTENCES = 8000


def read_sentences(path: Path) -> list[str]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            sys.exit(f"error: {path}:{number}: expected 3 tab-separated fields, got {len(fields)}")
        rows.append(fields[2].replace("''", '"').strip())
    return rows


def prefixes(sentences: list[str], indices: list[int], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    order = list(indices)
    rng.shuffle(order)
    out = []
    for index in order:
        words = sentences[index].split()
        k = rng.randint(2, 8)
        if len(words) >= k + 3:
            out.append(" ".join(words[:k]))
        if len(out) == count:
            return out
    return out


def prompt_messages(prefix: str) -> list:
    """A short system turn keeps SmolLM2's template from inserting its default one."""
    from preftune.data.schema import Message

    return [Message("system", SYSTEM), Message("user", INSTRUCTION.format(prefix=prefix))]


def write_prompts(items: list[str], path: Path) -> Path:
    rows = [{"prompt": [m.to_dict() for m in prompt_messages(p)]} for p in items]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def cached(path: Path, key: dict, compute):
    """compute() once per key; the result is kept as JSON beside its key."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["value"]
    value = compute()
    path.write_text(json.dumps({"key": key, "value": value}, indent=1))
    return value


def make_pairs(args, train_prefixes: list[str], out: Path) -> Path:
    """--samples-per-prompt samples per prompt from the starting policy, each scored by the gold
    reward; every pair of a prompt's samples is a preference (exact ties dropped)."""
    from itertools import combinations

    from preftune.data.schema import Message, PreferencePair, write_jsonl
    from preftune.generate import generate_completions
    from preftune.judges.registry import get_judge
    from preftune.models.load import load_policy

    path = out / "pairs.jsonl"

    def compute():
        model, tokenizer = load_policy(args.model)
        started = time.perf_counter()
        result = generate_completions(model, tokenizer, [prompt_messages(p) for p in train_prefixes], args.samples_per_prompt,
                                      max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                                      seed=args.seed, batch_size=32)  # fmt: skip
        gold = get_judge(args.gold)
        pairs, labels = [], 0
        for prefix, texts in zip(train_prefixes, result.texts, strict=True):
            scores = [gold(None, t) for t in texts]
            labels += len(texts)
            for i, j in combinations(range(len(texts)), 2):
                if scores[i] == scores[j]:
                    continue
                (chosen, rejected) = (i, j) if scores[i] > scores[j] else (j, i)
                pairs.append(PreferencePair(prompt_messages(prefix), Message("assistant", texts[chosen]), Message("assistant", texts[rejected]),
                                            source="smollm2+vader", meta={"gap": abs(scores[i] - scores[j])}))  # fmt: skip
        write_jsonl(pairs, path)
        return {"pairs": len(pairs), "prompts": len(train_prefixes), "gold_labels": labels,
                "seconds": time.perf_counter() - started}  # fmt: skip

    key = {"model": args.model, "prefixes": train_prefixes, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
           "gold": args.gold, "samples_per_prompt": args.samples_per_prompt}  # fmt: skip
    info = cached(out / "pairs.info.json", key, compute)
    print(f"pairs: {info['pairs']} from {info['prompts']} prompts ({info['gold_labels']} gold labels)", file=sys.stderr)
    return path


def run_dpo(args, pairs: Path, beta: float, out: Path) -> Path:
    from preftune.config import DPOConfig, resolve_config
    from preftune.train.dpo import train_dpo

    folder = out / f"dpo-beta{beta:g}"
    settings = dict(model=args.model, data=str(pairs), out=str(folder), lora=True, beta=beta, ref="precompute",
                    lr=args.dpo_lr, batch_size=8, epochs=args.dpo_epochs, max_length=112, max_prompt_length=64,
                    save_every=args.dpo_save_every, keep_last=100, warmup_ratio=0.1, log_every=1, seed=args.seed)  # fmt: skip
    return _train_once(
        folder, settings, lambda: train_dpo(resolve_config(DPOConfig, None, settings), show_progress=False)
    )


def run_ppo(args, prompts_file: Path, kl_coef: float, out: Path) -> Path:
    from preftune.config import PPOConfig, resolve_config
    from preftune.train.ppo import train_ppo

    folder = out / f"ppo-kl{kl_coef:g}"
    settings = dict(model=args.model, reward=args.gold, prompts=str(prompts_file), out=str(folder), lora=True,
                    value="shared", kl_coef=kl_coef, iterations=args.ppo_iterations, rollout_batch=args.rollout_batch,
                    batch_size=8, ppo_epochs=2, max_new_tokens=args.max_new_tokens, lr=args.ppo_lr, scheduler="constant",
                    save_every=args.ppo_save_every, keep_last=100, max_prompt_length=64, seed=args.seed)  # fmt: skip
    return _train_once(
        folder, settings, lambda: train_ppo(resolve_config(PPOConfig, None, settings), show_progress=False)
    )


def _train_once(folder: Path, settings: dict, train) -> Path:
    marker = folder / "bench-settings.json"
    if marker.exists() and json.loads(marker.read_text()) == settings and (folder / "final").exists():
        print(f"{folder.name}: reusing", file=sys.stderr)
        return folder
    started = time.perf_counter()
    train()
    marker.write_text(json.dumps(settings))
    (folder / "bench-timing.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))
    print(f"{folder.name}: trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folder


class Evaluator:
    """Gold reward and MC KL to the starting policy of any checkpoint, on fixed prompts and seed."""

    def __init__(self, args, eval_prefixes: list[str]):
        from preftune.judges.registry import get_judge
        from preftune.models.load import load_policy

        self.args = args
        self.prompts = [prompt_messages(p) for p in eval_prefixes]
        self.reference, self.tokenizer = load_policy(args.model)
        self.gold = get_judge(args.gold)

    def __call__(self, folder: str | None) -> dict:
        import torch

        from preftune.eval.kl import kl_estimate, sequence_log_ratios
        from preftune.generate import generate_completions
        from preftune.models.load import load_policy

        started = time.perf_counter()
        policy = self.reference if folder is None else load_policy(folder)[0]
        if hasattr(policy, "merge_and_unload"):  # a LoRA checkpoint: fold it in, faster to sample
            policy = policy.merge_and_unload()
        policy.eval()
        result = generate_completions(policy, self.tokenizer, self.prompts, self.args.eval_samples,
                                      max_new_tokens=self.args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                                      seed=self.args.seed + 1, batch_size=32)  # fmt: skip
        texts = [t for per in result.texts for t in per]
        scores = [self.gold(None, t) for t in texts]
        if policy is self.reference:
            kl = kl_estimate([0.0] * len(texts)).to_dict()
        else:
            rows_prompt = [
                p for p, per in zip(result.prompt_ids, result.completion_ids, strict=True) for _ in per
            ]
            rows_completion = [c for per in result.completion_ids for c in per]
            with torch.no_grad():
                ratios = sequence_log_ratios(policy, self.reference, rows_prompt, rows_completion,
                                             self.tokenizer.pad_token_id, temperature=1.0, batch_size=32)  # fmt: skip
            kl = kl_estimate(ratios).to_dict()
        mean = sum(scores) / len(scores)
        sd = (sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) ** 0.5
        return {"reward": mean, "reward_se": sd / len(scores) ** 0.5, "kl": kl["mean"], "kl_ci95": kl["ci95"],
                "mean_tokens": sum(len(c) for per in result.completion_ids for c in per) / len(texts),
                "example": texts[0], "seconds": time.perf_counter() - started,
                # Per sample, in prompt order (eval_samples per prompt): what the bootstrap resamples.
                "scores": scores, "log_ratios": [0.0] * len(texts) if policy is self.reference else [float(r) for r in ratios]}  # fmt: skip


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (folder / "checkpoints").glob("step-*"):
        found.append((int(path.name.removeprefix("step-")), path))
    return sorted(found)


def upper_envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The best reward reached at or below each KL: a non-decreasing staircase through the points."""
    out, best = [], -float("inf")
    for kl, reward in sorted(points):
        if reward > best:
            best = reward
            out.append((kl, reward))
    return out


def envelope_at(envelope: list[tuple[float, float]], kl: float) -> float | None:
    below = [r for k, r in envelope if k <= kl]
    return max(below) if below else None


def compare_frontiers(methods: dict[str, list[tuple[float, float]]]) -> tuple[list[dict], dict, dict]:
    """DPO's envelope against PPO's at every KL where either has a point, up to the smaller of the
    two methods' largest KLs (beyond it one of them has no frontier): the rows, the gap summary and
    the envelopes."""
    envelopes = {name: upper_envelope(p) for name, p in methods.items()}
    shared_max = min(max(k for k, _ in envelopes["DPO"]), max(k for k, _ in envelopes["PPO"]))
    grid = sorted({k for name in envelopes for k, _ in envelopes[name] if 0 < k <= shared_max} | {shared_max})
    rows = [{"kl": k, "dpo": envelope_at(envelopes["DPO"], k), "ppo": envelope_at(envelopes["PPO"], k)} for k in grid]
    gaps = [c["dpo"] - c["ppo"] for c in rows if c["dpo"] is not None and c["ppo"] is not None]
    summary = {"mean": sum(gaps) / len(gaps) if gaps else None, "min": min(gaps, default=None),
               "max": max(gaps, default=None), "shared_kl_max": shared_max}  # fmt: skip
    return rows, summary, envelopes


def method_points(base: dict, points: dict, prompts=None, samples: int = 1) -> dict[str, list[tuple[float, float]]]:
    """(KL, reward) of every checkpoint per method, the starting policy (KL 0) in both; with
    `prompts` (indices, repeats allowed), each recomputed from those prompts' samples only."""

    def mean_of(values: list[float]) -> float:
        if prompts is None:
            return sum(values) / len(values)
        chosen = [values[p * samples + k] for p in prompts for k in range(samples)]
        return sum(chosen) / len(chosen)

    methods = {"DPO": [], "PPO": []}
    for label, entries in points.items():
        methods[label.split()[0]].extend((mean_of(e["log_ratios"]), mean_of(e["scores"])) for e in entries)
    for name in methods:
        methods[name].append((0.0, mean_of(base["scores"])))
    return methods


def bootstrap_gap(base: dict, points: dict, prompts: int, samples: int, draws: int, seed: int) -> list[float] | None:
    """95% percentile interval of the mean frontier gap, resampling evaluation prompts."""
    rng = random.Random(seed)
    gaps = []
    for _ in range(draws):
        chosen = [rng.randrange(prompts) for _ in range(prompts)]
        _, summary, _ = compare_frontiers(method_points(base, points, chosen, samples))
        if summary["mean"] is not None:
            gaps.append(summary["mean"])
    if not gaps:
        return None
    gaps.sort()
    return [gaps[int(0.025 * (len(gaps) - 1))], gaps[int(0.975 * (len(gaps) - 1))]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--gold", default="judge:sentiment", help="the gold reward (judge:readability for smoke tests)"
    )
    parser.add_argument("--betas", default="0.05,0.1,0.5")
    parser.add_argument("--kl-coefs", default="0.05,0.2")
    parser.add_argument("--train-prompts", type=int, default=128)
    parser.add_argument(
        "--samples-per-prompt", type=int, default=3, help="DPO's gold-labelled samples per training prompt"
    )
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the evaluation prompts")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--dpo-epochs", type=float, default=1.0)
    parser.add_argument("--dpo-lr", type=float, default=5e-4)
    parser.add_argument("--dpo-save-every", type=int, default=16)
    parser.add_argument("--ppo-iterations", type=int, default=24)
    parser.add_argument("--rollout-batch", type=int, default=16)
    parser.add_argument("--ppo-lr", type=float, default=5e-4)
    parser.add_argument("--ppo-save-every", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-frontier"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sentences = read_sentences(Path(args.data))
    train_prefixes = prefixes(sentences, list(range(TRAIN_SENTENCES)), args.train_prompts, args.seed)
    eval_prefixes = prefixes(
        sentences, list(range(TRAIN_SENTENCES, len(sentences))), args.eval_prompts, args.seed + 1
    )
    pairs = make_pairs(args, train_prefixes, out)
    prompts_file = write_prompts(train_prefixes, out / "train-prompts.jsonl")

    runs = {}
    for beta in [float(b) for b in args.betas.split(",") if b]:
        runs[f"DPO beta={beta:g}"] = run_dpo(args, pairs, beta, out)
    for kl_coef in [float(k) for k in args.kl_coefs.split(",") if k]:
        runs[f"PPO kl_coef={kl_coef:g}"] = run_ppo(args, prompts_file, kl_coef, out)

    evaluator = Evaluator(args, eval_prefixes)
    eval_key = {"model": args.model, "prefixes": eval_prefixes, "samples": args.eval_samples, "per_sample": 1,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed, "gold": args.gold}  # fmt: skip
    base = cached(out / "eval-base.json", eval_key, lambda: evaluator(None))
    points = {}
    for label, folder in runs.items():
        points[label] = []
        for step, path in checkpoints(folder):
            mtime = (path / "trainer_state.pt").stat().st_mtime
            entry = cached(
                path.parent.parent / f"eval-step-{step}.json",
                eval_key | {"mtime": mtime},
                lambda path=path: evaluator(str(path)),
            )
            points[label].append({"step": step} | entry)
            print(
                f"{label} step {step}: reward {entry['reward']:+.3f}, KL {entry['kl']:.2f}", file=sys.stderr
            )

    comparison, gap, envelopes = compare_frontiers(method_points(base, points))
    gap["ci95"] = bootstrap_gap(base, points, len(eval_prefixes), args.eval_samples, args.bootstrap, args.seed)
    results = {
        "command": "python " + shlex.join(["bench/dpo_frontier.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {args.threads} torch thread(s), {platform.processor() or 'cpu'}",
        "settings": vars(args),
        "pairs": json.loads((out / "pairs.info.json").read_text())["value"],
        "label_budget": {"dpo_gold_labels": json.loads((out / "pairs.info.json").read_text())["value"]["gold_labels"],
                         "ppo_rewards_per_run": args.ppo_iterations * args.rollout_batch},  # fmt: skip
        "base": base,
        "runs": points,
        "train_seconds": {
            label: json.loads((folder / "bench-timing.json").read_text())["seconds"]
            for label, folder in runs.items()
        },
        "envelopes": envelopes,
        "comparison": comparison,
        "dpo_minus_ppo": gap,
        "total_seconds": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    draw(results, out / "frontier.svg")
    print_table(results)


def draw(results: dict, path: Path) -> None:
    from svgplot import Panel, Series, render

    panel = Panel("gold reward (VADER) vs KL(pi || pi_ref)", "sequence KL [nats]", "mean VADER compound")
    blues, reds = (
        iter(["#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b"]),
        iter(["#fc9272", "#ef3b2c", "#a50f15", "#67000d"]),
    )
    for label, entries in results["runs"].items():
        xs = [0.0] + [e["kl"] for e in entries]
        ys = [results["base"]["reward"]] + [e["reward"] for e in entries]
        color = next(blues if label.startswith("DPO") else reds, None)
        panel.series.append(Series(label, xs, ys, "marker", color))
    for name, color in (("DPO", "#1f77b4"), ("PPO", "#d62728")):
        envelope = results["envelopes"][name]
        panel.series.append(
            Series(f"{name} frontier", [k for k, _ in envelope], [r for _, r in envelope], "dashed", color)
        )
    path.write_text(render([panel], width=620, height=420), encoding="utf-8")


def ci_text(interval) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "-"


def print_table(results: dict) -> None:
    budget = results["label_budget"]
    print(f"starting policy: reward {results['base']['reward']:+.3f}; pairs: {results['pairs']['pairs']} "
          f"({budget['dpo_gold_labels']} gold labels for DPO, {budget['ppo_rewards_per_run']} rewards per PPO run)")  # fmt: skip
    print("| run | step | KL (nats) [95% CI] | mean VADER (+- se) | mean tokens |\n|---|---|---|---|---|")
    for label, entries in results["runs"].items():
        for e in entries:
            print(f"| {label} | {e['step']} | {e['kl']:.2f} [{e['kl_ci95'][0]:.2f}, {e['kl_ci95'][1]:.2f}] | "
                  f"{e['reward']:+.3f} +- {e['reward_se']:.3f} | {e['mean_tokens']:.1f} |")  # fmt: skip
    gap = results["dpo_minus_ppo"]
    if gap["mean"] is not None:
        print(f"\nDPO frontier minus PPO frontier, over KL in (0, {gap['shared_kl_max']:.2f}]: "
              f"mean {gap['mean']:+.3f} (95% CI {ci_text(gap['ci95'])}), range [{gap['min']:+.3f}, {gap['max']:+.3f}]")  # fmt: skip
    print(f"total {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()

"""KTO against DPO on the demo's kid prompts, with the same number of kid-judge labels.

    .venv/bin/python bench/kto_vs_dpo.py [--labels 96] [--eval-prompts 40] [--max-new-tokens 56]
        [--threshold median] [--model smollm2-135m] [--out runs/bench-kto-vs-dpo]

A label is one verdict of the kid judge (`preftune.judges.kid`: readability x relevance, the demo's
gold): a *pair* label says which of two answers to a prompt is better (DPO's data), a *thumb* says
whether one answer is good (KTO's data: its kid score thresholded, by default at the median of the
scored answers, so half are thumbs up). With --labels L, both methods see the same L training
prompts (the demo's training split), two samples each from the base model (temperature 1):

- DPO: L pairs, the higher kid score chosen (near-ties, |gap| < 0.02, dropped as in the demo, so
  a few fewer);
- KTO: L thumbs, on the first sample of each prompt;
- KTO, both answers: 2L thumbs, on both samples (as many kid-judge *calls* as DPO's L pairs).

Training is the demo's (LoRA r 16, batch 4, 2 epochs, lr 2e-4, max length 192); beta 0.05 for DPO
(the demo's) and 0.1 for KTO (the KTO paper's and TRL's default). Each final policy is evaluated
like the demo: two samples per held-out prompt at temperature 1 against the base model's samples,
the kid judge's win rate with its 95% CI (`preftune.eval.winrate`, ties counted half).

Everything slow is cached under --out (samples, scores, runs, evals): a rerun only reprints.
Writes results.json there and prints a Markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path


def sample_answers(model: str, prompts: list[str], max_new_tokens: int, seed: int, cache: Path) -> list[list[str]]:
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    from preftune.data.schema import user_prompt
    from preftune.generate import generate_completions
    from preftune.models.load import load_policy

    policy, tokenizer = load_policy(model, seed=seed)
    samples = generate_completions(policy, tokenizer, [user_prompt(p) for p in prompts], 2, max_new_tokens=max_new_tokens,
                                   temperature=1.0, top_p=1.0, seed=seed, batch_size=16, show_progress=True)  # fmt: skip
    cache.write_text(json.dumps(samples.texts, ensure_ascii=False), encoding="utf-8")
    return samples.texts


def kid_scores(prompts: list[str], answers: list[list[str]], cache: Path) -> list[list[float]]:
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    from preftune.judges.kid import kid_scores as score

    flat = score([p for p, pair in zip(prompts, answers, strict=True) for _ in pair], [a for pair in answers for a in pair])
    scores = [flat[2 * i : 2 * i + 2] for i in range(len(prompts))]
    cache.write_text(json.dumps(scores), encoding="utf-8")
    return scores


def write_data(root: Path, prompts, answers, scores, threshold: float) -> dict[str, Path]:
    """The three training sets (see the module docstring) as files `preftune dpo` / `kto` read."""
    from preftune.data.schema import Message, UnpairedExample, user_prompt, write_jsonl
    from preftune.demo import label_by_kid_judge

    pairs, _near_ties = label_by_kid_judge(prompts, answers)  # the demo's labelling: near-ties dropped

    def thumb(prompt, answer, score):
        return UnpairedExample(user_prompt(prompt), Message("assistant", answer), score > threshold, meta={"kid": score})

    files = {"dpo": root / "pairs.jsonl", "kto": root / "thumbs.jsonl", "kto-both": root / "thumbs-both.jsonl"}
    write_jsonl(pairs, files["dpo"])
    write_jsonl([thumb(p, a[0], s[0]) for p, a, s in zip(prompts, answers, scores, strict=True)], files["kto"])
    write_jsonl([thumb(p, a[k], s[k]) for p, a, s in zip(prompts, answers, scores, strict=True) for k in (0, 1)],
                files["kto-both"])  # fmt: skip
    return files


def train(kind: str, data: Path, out: Path, model: str, seed: int) -> Path:
    if (out / "summary.json").exists():
        return out
    from preftune.config import DPOConfig, KTOConfig, resolve_config
    from preftune.train.dpo import train_dpo
    from preftune.train.kto import train_kto

    common = dict(model=model, data=str(data), out=str(out), lora=True, lora_r=16, lora_alpha=32, seed=seed, batch_size=4,
                  max_length=192, max_prompt_length=64, epochs=2, lr=2e-4, warmup_ratio=0.1, overwrite=True)  # fmt: skip
    if kind == "dpo":
        return train_dpo(resolve_config(DPOConfig, None, common | {"beta": 0.05}), show_progress=False)
    return train_kto(resolve_config(KTOConfig, None, common | {"beta": 0.1}), show_progress=False)


def evaluate(run: Path, model: str, prompts_file: Path, out: Path, max_new_tokens: int, seed: int) -> dict:
    if (out / "eval.json").exists():
        return json.loads((out / "eval.json").read_text(encoding="utf-8"))
    from preftune.eval.run import EvalSettings, run_eval

    return run_eval(EvalSettings(model=str(run / "final"), ref=model, prompts=str(prompts_file), out=str(out),
                                 judges=["kid"], n=2, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed + 1,
                                 batch_size=16), show_progress=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=96, help="kid-judge labels per method (pairs for DPO, thumbs for KTO)")
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=56)
    parser.add_argument("--threshold", default="median", help="kid score above which a thumb is up: a number, or median")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-kto-vs-dpo"))
    args = parser.parse_args()

    from preftune.demo import DemoSize, demo_prompts, split_prompts

    started = time.perf_counter()
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    train_prompts, eval_prompts = split_prompts(demo_prompts(), DemoSize(args.labels, args.eval_prompts, args.max_new_tokens, 2, 1))
    if len(train_prompts) < args.labels:
        sys.exit(f"error: --labels {args.labels}: the demo has only {len(train_prompts)} training prompts")
    prompts_file = root / "eval_prompts.txt"
    prompts_file.write_text("\n".join(eval_prompts) + "\n", encoding="utf-8")

    answers = sample_answers(args.model, train_prompts, args.max_new_tokens, args.seed, root / "samples.json")
    scores = kid_scores(train_prompts, answers, root / "kid_scores.json")
    threshold = statistics.median(s for pair in scores for s in pair) if args.threshold == "median" else float(args.threshold)
    files = write_data(root, train_prompts, answers, scores, threshold)
    pair_count = sum(1 for line in files["dpo"].read_text(encoding="utf-8").splitlines() if line.strip())
    if pair_count < 4 or all(s <= threshold for pair in scores for s in pair):
        sys.exit(f"error: {pair_count} pairs beyond near-ties and {sum(s > threshold for p in scores for s in p)} thumbs up: "
                 "too few to train on (a model that writes no readable text? use a real one, or more --labels)")  # fmt: skip

    rows = {}
    for kind, label in (("dpo", "DPO, pairs"), ("kto", "KTO, thumbs on one answer per prompt"),
                        ("kto-both", "KTO, thumbs on both answers")):  # fmt: skip
        examples = sum(1 for line in files[kind].read_text(encoding="utf-8").splitlines() if line.strip())
        run_started = time.perf_counter()
        run = train("dpo" if kind == "dpo" else "kto", files[kind], root / kind, args.model, args.seed)
        result = evaluate(run, args.model, prompts_file, root / f"{kind}-eval", args.max_new_tokens, args.seed)
        kid = result["judges"]["kid"]
        rows[kind] = {"label": label, "examples": examples, "win_rate": kid["win_rate"], "ci95": kid["ci95"],
                      "ties": kid["ties"], "kid_mean": kid["policy_mean"], "kid_ref_mean": kid["ref_mean"],
                      "kl": result["kl"]["mean"], "seconds": round(time.perf_counter() - run_started, 1)}  # fmt: skip
        print(f"{label}: win rate {kid['win_rate']:.3f} (95% CI {kid['ci95'][0]:.3f}-{kid['ci95'][1]:.3f})", file=sys.stderr)

    thumbs_up = sum(s > threshold for s, _ in scores)
    summary = {"command": shlex.join(sys.argv), "machine": platform.processor() or platform.machine(),
               "threshold": threshold, "thumbs_up_of_first_answers": [thumbs_up, len(scores)],
               "seconds": round(time.perf_counter() - started, 1), "rows": rows}  # fmt: skip
    (root / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("| method | training examples | kid-judge win rate vs base (95% CI) | kid score (base -> tuned) | KL (nats) |")
    print("|---|---|---|---|---|")
    for row in rows.values():
        low, high = row["ci95"]
        print(f"| {row['label']} | {row['examples']} | {row['win_rate']:.1%} ({low:.1%} to {high:.1%}) | "
              f"{row['kid_ref_mean']:.3f} -> {row['kid_mean']:.3f} | {row['kl']:.2f} |")  # fmt: skip
    print(f"\nthreshold {threshold:.3f}; {summary['seconds']:.0f} s in all; results in {root / 'results.json'}")


if __name__ == "__main__":
    main()

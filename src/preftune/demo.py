"""`preftune demo`: teach SmolLM2-135M to explain things to a 5-year-old, end to end, on a CPU.

    prompts (shipped) -> two samples per training prompt -> label by the kid judge
    (--human: by you, in the labeling app, DIR/labels.db) -> reward model -> DPO with LoRA
    -> [--ppo: PPO against the reward model, with the KL penalty and with kl_coef 0, the kid judge
        scoring every rollout as the gold it never trains on]
    -> evaluate on held-out prompts: kid-judge win rate vs the base model, readability, KL, length
    -> DIR/eval.json, DIR/report.html (with --ppo: proxy against gold per PPO iteration)

Every stage is the product's own command, called as a function, writing its usual run folder,
so each can be opened on the dashboard afterwards (`preftune serve --runs DIR`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .data.schema import Message, PreferencePair, user_prompt, write_jsonl


@dataclass
class DemoSize:
    train_prompts: int
    eval_prompts: int
    max_new_tokens: int
    dpo_epochs: float
    rm_epochs: float
    ppo_iterations: int = 12
    ppo_rollout: int = 8  # prompts per PPO iteration, one completion each
    ppo_new_tokens: int = 32
    rm_top_layers: int = 8  # LoRA on the reward model's top blocks only (SmolLM2 has 30)
    dpo_beta: float = 0.1


DEMO_MODEL = "smollm2-135m"
# beta 0.05 for the full run: at 0.1 its held-out win rate was 62.5% (95% CI 47.0-75.8%) on 40 prompts.
FULL = DemoSize(train_prompts=120, eval_prompts=40, max_new_tokens=56, dpo_epochs=2, rm_epochs=1, dpo_beta=0.05)
QUICK = DemoSize(train_prompts=48, eval_prompts=24, max_new_tokens=48, dpo_epochs=2, rm_epochs=1)
MIN_SCORE_GAP = 0.02  # pairs whose kid scores differ less than this are near-ties, left out
MIN_HUMAN_PAIRS = 4  # fewer votes that pick a side leave the reward model nothing to split
PPO_RUNS = {"KL-penalised": None, "no KL (kl_coef 0)": 0.0}  # label -> kl_coef (None: PPOConfig's default)
PPO_FOLDERS = {"KL-penalised": "ppo", "no KL (kl_coef 0)": "ppo-kl0"}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def demo_prompts() -> list[str]:
    """The shipped prompt set (written for this project), in file order."""
    text = resources.files("preftune").joinpath("assets/kid_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def split_prompts(prompts: list[str], size: DemoSize) -> tuple[list[str], list[str]]:
    """Every fifth prompt is held out, so both sets cover every topic family."""
    held_out = [p for i, p in enumerate(prompts) if i % 5 == 4][: size.eval_prompts]
    train = [p for i, p in enumerate(prompts) if i % 5 != 4][: size.train_prompts]
    return train, held_out


def label_by_kid_judge(prompts: list[str], candidates: list[list[str]]) -> tuple[list[PreferencePair], int]:
    """Chosen = the candidate the kid judge scores higher; near-ties are dropped (counted)."""
    from .judges.kid import kid_scores

    flat_prompts = [p for p, pair in zip(prompts, candidates, strict=True) for _ in pair]
    scores = kid_scores(flat_prompts, [c for pair in candidates for c in pair])
    pairs, ties = [], 0
    for i, (prompt, (first, second)) in enumerate(zip(prompts, candidates, strict=True)):
        a, b = scores[2 * i], scores[2 * i + 1]
        if abs(a - b) < MIN_SCORE_GAP or first.strip() == second.strip():
            ties += 1
            continue
        chosen, rejected = (first, second) if a > b else (second, first)
        pairs.append(PreferencePair(user_prompt(prompt), Message("assistant", chosen), Message("assistant", rejected),
                                    id=str(i), source="demo:kid-judge", meta={"kid": [max(a, b), min(a, b)]}))  # fmt: skip
    return pairs, ties


def label_by_people(
    prompts: list[str], candidates: list[list[str]], root: Path, port: int = 8000, seed: int = 0
) -> tuple[list[PreferencePair], int]:
    """--human: the pairs as a project in DIR/labels.db, served until every pair has a vote.

    Returns (pairs from the votes, pairs left out: ties, both bad, skips, identical answers).
    """
    from .config import ConfigError
    from .web.labeling_round import LabelingRound
    from .web.store import StoreError

    labeling = LabelingRound(f"sqlite:///{root / 'labels.db'}", project="demo", seed=seed)
    try:
        total = labeling.prepare(prompts, candidates)
        link = labeling.start(port=port)
        done = labeling.progress()[0]
        resumed = f" (resuming: {done} already voted)" if labeling.resumed else ""
        _say(f"      {total} pairs to vote on{resumed}. Open this link in a browser on this machine:")
        _say(f"      {link}")
        _say("      The demo goes on by itself once every pair has a vote (Ctrl-C stops; votes are kept).")
        labeling.wait(show_progress=sys.stderr.isatty(), say=_say)
        pairs, dropped = labeling.pairs()
    except StoreError as error:
        raise ConfigError("--human", 0, str(error)) from None
    finally:
        labeling.close()
    left_out = sum(dropped.values()) + len(prompts) - total
    if len(pairs) < MIN_HUMAN_PAIRS:
        raise ConfigError("--human", 0, f"only {len(pairs)} of your votes pick a side; the reward model needs at least "
                          f"{MIN_HUMAN_PAIRS} (votes are in {root / 'labels.db'})")  # fmt: skip
    return pairs, left_out


def run_demo(
    out: str = "runs/demo",
    quick: bool = False,
    human: bool = False,
    ppo: bool = False,
    seed: int = 0,
    *,
    model: str = DEMO_MODEL,
    size: DemoSize | None = None,
    port: int = 8000,
) -> dict:
    """The pipeline (module docstring). `model` and `size` exist for tests (the `tiny` model);
    `port` is where --human serves the labeling app (a free one if it is taken)."""
    from .config import DPOConfig, RMConfig, resolve_config
    from .eval.run import EvalSettings, run_eval
    from .generate import generate_completions
    from .models.load import load_policy
    from .train.dpo import train_dpo
    from .train.reward import train_reward_model

    size = size or (QUICK if quick else FULL)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    show = sys.stderr.isatty()
    stages = 7 if ppo else 6

    cached = " (fetched and converted once, then cached)" if model == DEMO_MODEL else ""
    _say(f"[1/{stages}] {model}{cached}")
    policy, tokenizer = load_policy(model, seed=seed)

    train_prompts, eval_prompts = split_prompts(demo_prompts(), size)
    (root / "eval_prompts.txt").write_text("\n".join(eval_prompts) + "\n", encoding="utf-8")
    _say(f"[2/{stages}] {len(train_prompts)} training prompts, {len(eval_prompts)} held out")

    _say(f"[3/{stages}] sampling two answers per training prompt (up to {size.max_new_tokens} tokens each)")
    samples = generate_completions(policy, tokenizer, [user_prompt(p) for p in train_prompts], 2,
                                   max_new_tokens=size.max_new_tokens, temperature=1.0, top_p=1.0, seed=seed,
                                   batch_size=16, show_progress=True)  # fmt: skip
    _say(f"      {samples.new_tokens} tokens in {samples.seconds:.0f}s ({samples.tokens_per_second:.1f} tokens/s; {samples.engine})")
    del policy

    if human:
        _say(f"[4/{stages}] labelling: you vote on the pairs in the labeling app")
        pairs, ties = label_by_people(train_prompts, samples.texts, root, port=port, seed=seed)
        left_out = "ties, both bad, skipped or identical"
    else:
        _say(f"[4/{stages}] labelling pairs with the kid-friendliness judge (readability x relevance x coherence)")
        pairs, ties = label_by_kid_judge(train_prompts, samples.texts)
        left_out = "near-ties"
    pairs_file = root / "pairs.jsonl"
    write_jsonl(pairs, pairs_file)
    _say(f"      {len(pairs)} pairs ({ties} {left_out} left out) -> {pairs_file}")

    common = dict(model=model, data=str(pairs_file), lora=True, seed=seed, batch_size=4, max_length=192,
                  max_prompt_length=64, lora_r=16, lora_alpha=32, overwrite=True)  # fmt: skip
    _say(f"[5/{stages}] reward model, then DPO with LoRA")
    rm_out = train_reward_model(resolve_config(RMConfig, None, common | dict(
        out=str(root / "rm"), epochs=size.rm_epochs, lr=2e-4, lora_top_layers=size.rm_top_layers, eval_split=0.2)), show_progress=show)  # fmt: skip
    dpo_out = train_dpo(resolve_config(DPOConfig, None, common | dict(
        out=str(root / "dpo"), epochs=size.dpo_epochs, lr=2e-4, beta=size.dpo_beta, warmup_ratio=0.1)), show_progress=show)  # fmt: skip

    ppo_runs: dict[str, Path] = {}
    ppo_evals: dict[str, dict] = {}
    if ppo:
        _say(f"[6/{stages}] PPO against the reward model, with the KL penalty and without (kl_coef 0)")
        ppo_runs, ppo_evals = run_ppo_pair(root, model, rm_out / "final", train_prompts, size, seed, show)

    _say(f"[{stages}/{stages}] evaluating on held-out prompts against the base model")
    result = run_eval(EvalSettings(
        model=str(dpo_out / "final"), ref=model, prompts=str(root / "eval_prompts.txt"), out=str(root),
        judges=["kid", "judge:readability", f"rm:{rm_out / 'final'}"], n=2, max_new_tokens=size.max_new_tokens,
        temperature=1.0, seed=seed + 1, batch_size=16,
    ), show_progress=show)  # fmt: skip
    generations = [json.loads(line) for line in (root / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    result["readability_grade"] = {
        "policy_mean": _mean_grade(g["policy"] for g in generations),
        "ref_mean": _mean_grade(g["reference"] for g in generations),
        "measure": "Flesch-Kincaid grade level (textstat); lower = easier",
    }
    runs = {"rm": str(rm_out), "dpo": str(dpo_out)} | {PPO_FOLDERS[k]: str(v) for k, v in ppo_runs.items()}
    result["demo"] = {"seconds": round(time.perf_counter() - started, 1), "pairs": len(pairs), "near_ties": ties,
                      "labels": "human" if human else "kid judge", "quick": quick, "runs": runs}  # fmt: skip
    result["examples"] = _before_after(generations, 3)
    if ppo:
        result["ppo"] = _ppo_summary(ppo_runs, ppo_evals)
        from .report import insert_section, proxy_gold_section

        insert_section(root / "report.html", proxy_gold_section(ppo_runs, gold_name="kid judge", evals=ppo_evals))
    (root / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _print_summary(result, root)
    return result


def run_ppo_pair(
    root: Path, model: str, rm_dir: Path, prompts: list[str], size: DemoSize, seed: int, show: bool
) -> tuple[dict[str, Path], dict[str, dict]]:
    """Two PPO runs from the base model against the reward model, alike but for kl_coef, each
    rollout also scored by the kid judge (the gold it never sees); then each final policy against
    the base model on the held-out prompts (DIR/eval_prompts.txt), one sample per prompt, with the
    reward model as the proxy judge and the kid judge as gold (DIR/ppo*-eval/).
    Returns (label -> run folder, label -> that eval.json)."""
    from .config import PPOConfig, resolve_config
    from .eval.run import EvalSettings, run_eval
    from .judges.registry import get_judge
    from .train.ppo import train_ppo

    prompts_file = root / "ppo_prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    gold = get_judge("kid")
    runs, evals = {}, {}
    for label, kl_coef in PPO_RUNS.items():
        # Small on purpose (a few minutes each on a CPU): short answers, LoRA, a head on the policy
        # trunk for the value (no second model), a high lr so the policy moves within a dozen rollouts.
        settings = dict(model=model, prompts=str(prompts_file), reward=f"rm:{rm_dir}", out=str(root / PPO_FOLDERS[label]),
                        iterations=size.ppo_iterations, rollout_batch=size.ppo_rollout, batch_size=4, ppo_epochs=2,
                        max_new_tokens=size.ppo_new_tokens, lr=1e-3, scheduler="constant", lora=True, lora_r=16,
                        lora_alpha=32, value="shared", seed=seed, overwrite=True)  # fmt: skip
        if kl_coef is not None:
            settings["kl_coef"] = kl_coef
        config = resolve_config(PPOConfig, None, settings)
        _say(f"      {label}: kl_coef {config.kl_coef}, {config.iterations} iterations of {config.rollout_batch} rollouts")
        runs[label] = train_ppo(config, show_progress=show, gold=gold)
    for label, run_dir in runs.items():
        evals[label] = run_eval(EvalSettings(
            model=str(run_dir / "final"), ref=model, prompts=str(root / "eval_prompts.txt"),
            out=str(root / f"{PPO_FOLDERS[label]}-eval"), judges=[f"rm:{rm_dir}"], gold="kid", n=1,
            max_new_tokens=size.ppo_new_tokens, temperature=1.0, seed=seed + 1, batch_size=16,
        ), show_progress=show)  # fmt: skip
    return runs, evals


def _ppo_summary(runs: dict[str, Path], evals: dict[str, dict]) -> dict:
    """eval.json's `ppo`: per run, its folder, the per-iteration curves and their trends, and the
    held-out win rates of its final policy against the base model (proxy and gold)."""
    from .report import describe_run, ppo_curves, trend

    summary = {}
    for label, run_dir in runs.items():
        curves, held_out = ppo_curves(run_dir), evals[label]
        proxy = next(spec for spec in held_out["judges"] if spec != held_out["gold"])
        summary[label] = {"run": str(run_dir), "curves": curves, "proxy_trend": trend(curves["proxy"]),
                          "gold_trend": trend(curves["gold"]), "verdict": describe_run(label, curves),
                          "held_out": {"eval": held_out["settings"]["out"], "kl": held_out["kl"]["mean"],
                                       "proxy_win_rate": held_out["judges"][proxy]["win_rate"],
                                       "gold_win_rate": held_out["judges"][held_out["gold"]]["win_rate"]}}  # fmt: skip
    return summary


def _mean_grade(texts) -> float:
    import textstat

    grades = [textstat.flesch_kincaid_grade(t) for t in texts if t.strip()]
    return sum(grades) / max(len(grades), 1)


def _before_after(generations: list[dict], count: int) -> list[dict]:
    """The first sample of the first `count` held-out prompts: base model next to the tuned one."""
    picked = [g for g in generations if g.get("sample", 0) == 0][:count]
    return [{"prompt": g["prompt"][-1]["content"], "before": g["reference"], "after": g["policy"],
             "kid_before": g["scores"]["kid"]["reference"], "kid_after": g["scores"]["kid"]["policy"]} for g in picked]  # fmt: skip


def _print_summary(result: dict, root: Path) -> None:
    kid = result["judges"]["kid"]
    low, high = kid["ci95"]
    _say("")
    _say(f"kid-judge win rate vs the base model: {kid['win_rate']:.1%} (95% CI {low:.1%} to {high:.1%}, ties {kid['ties']})")
    _say(f"kid score: {kid['ref_mean']:.3f} -> {kid['policy_mean']:.3f}")
    grade = result["readability_grade"]
    _say(f"readability grade (Flesch-Kincaid, lower = easier): {grade['ref_mean']:.1f} -> {grade['policy_mean']:.1f}")
    _say(f"KL(policy || base): {result['kl']['mean']:.2f} nats;  length: {result['length']['ref_mean']:.0f} -> {result['length']['policy_mean']:.0f} tokens")
    for example in result["examples"]:
        _say(f"\n  {example['prompt']}")
        _say(f"    before ({example['kid_before']:.2f}): {' '.join(example['before'].split())[:300]}")
        _say(f"    after  ({example['kid_after']:.2f}): {' '.join(example['after'].split())[:300]}")
    for entry in result.get("ppo", {}).values():
        _say(f"\nPPO {entry['verdict']}")
    _say(f"report: {root / 'report.html'}")
    _say(f"dashboard: preftune serve --runs {root}")

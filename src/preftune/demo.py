"""`preftune demo`: teach SmolLM2-135M to explain things to a 5-year-old, end to end, on a CPU.

    prompts (shipped) -> four samples per training prompt -> every pair the kid judge separates
    (--human: two samples, and you vote in the labeling app, DIR/labels.db)
    -> reward model on the pairs of 4 in 5 training prompts, scored on the pairs of the 5th
    -> DPO with LoRA on each prompt's best answer against its worst
    -> [--ppo: PPO against the reward model, with the KL penalty and with kl_coef 0, the kid judge
        scoring every rollout as the gold it never trains on]
    -> evaluate on held-out prompts: kid-judge win rate vs the base model, readability, KL, length
    -> DIR/eval.json, DIR/report.html (with --ppo: proxy against gold per PPO iteration)

PPO stays behind --ppo: at this size (12 iterations of 8 rollouts against a reward model that ranks
65% of held-out pairs right) it did not beat the base model under the gold judge, and it adds five
minutes to the full demo (bench/README.md, "The demo").

Why four samples per prompt: two give one pair per prompt, and the reward model then scored 50%
on unseen prompts; the six pairs of four answers gave it 65%, at the cost of about 20 s more sampling
(bench/README.md, "The demo"). Why the reward model's held-out pairs are whole prompts: pairs of
one prompt share their answers, so a random split would score the model on answers it trained on.

Every stage is the product's own command, called as a function, writing its usual run folder,
so each can be opened on the dashboard afterwards (`preftune serve --runs DIR`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from pathlib import Path

from .data.schema import Message, PreferencePair, user_prompt, write_jsonl
from .eval.baselines import easier_to_read, rule_accuracies, shorter


@dataclass
class DemoSize:
    train_prompts: int
    eval_prompts: int
    max_new_tokens: int
    dpo_epochs: float
    rm_epochs: float
    samples_per_prompt: int = 4  # --human samples two: one pair per prompt to vote on
    rm_lr: float = 5e-4
    rm_top_layers: int = 8  # LoRA on the reward model's top blocks only (SmolLM2 has 30)
    dpo_beta: float = 0.1
    # DPO on every pair the judge separates, not only each prompt's best answer against its worst
    # (bench/demo_seeds.py compares the two; bench/README.md, "The demo").
    dpo_all_pairs: bool = False
    ppo_iterations: int = 12
    ppo_rollout: int = 8  # prompts per PPO iteration, one completion each
    ppo_new_tokens: int = 32
    # lr 5e-4 keeps the KL-penalised run near its budget (8.4-10.4 nats); lr 1e-3 ran to 13-18 nats
    # with kl_runaway. Gold did not follow reliably (bench/README.md, "The demo").
    ppo_kl_coef: float = 0.05
    ppo_lr: float = 5e-4
    kl_budget: float = 10.0  # nats per completion the KL-penalised policy may drift from the base model


DEMO_MODEL = "smollm2-135m"
# beta 0.05 for the full run: at 0.1 its held-out win rate was 62.5% (95% CI 47.0-75.8%) on 40 prompts.
FULL = DemoSize(train_prompts=160, eval_prompts=40, max_new_tokens=56, dpo_epochs=2, rm_epochs=1, dpo_beta=0.05)
QUICK = DemoSize(train_prompts=48, eval_prompts=24, max_new_tokens=48, dpo_epochs=2, rm_epochs=1, ppo_iterations=6)
MIN_SCORE_GAP = 0.05  # pairs whose kid scores differ less than this are near-ties, left out
HELD_OUT_EVERY = 5  # every 5th labelled prompt's pairs score the reward model
MIN_HUMAN_PAIRS = 4  # fewer votes that pick a side leave the reward model nothing to split
# What the reward model's held-out accuracy is printed beside: the length floor, and the one feature
# the kid judge ranks by (its other two terms are guards), which a rule reads straight off the text.
RULE_BASELINES = {"shorter answer wins": shorter, "easier to read wins (Flesch reading ease)": easier_to_read}
PPO_RUNS = {"KL-penalised": None, "no KL (kl_coef 0)": 0.0}  # label -> kl_coef (None: DemoSize.ppo_kl_coef)
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
    """Every pair of a prompt's candidates, chosen = the one the kid judge scores higher.
    Near-ties (scores closer than MIN_SCORE_GAP) and identical answers are left out and counted.
    Each pair's meta holds both kid scores and the index of its prompt."""
    from .judges.kid import kid_scores

    flat_prompts = [p for p, answers in zip(prompts, candidates, strict=True) for _ in answers]
    flat_scores = iter(kid_scores(flat_prompts, [c for answers in candidates for c in answers]))
    pairs, ties = [], 0
    for index, (prompt, answers) in enumerate(zip(prompts, candidates, strict=True)):
        scores = [next(flat_scores) for _ in answers]
        for i, j in combinations(range(len(answers)), 2):
            if abs(scores[i] - scores[j]) < MIN_SCORE_GAP or answers[i].strip() == answers[j].strip():
                ties += 1
                continue
            win, lose = (i, j) if scores[i] > scores[j] else (j, i)
            pairs.append(PreferencePair(user_prompt(prompt), Message("assistant", answers[win]),
                                        Message("assistant", answers[lose]), id=f"{index}-{win}-{lose}",
                                        source="demo:kid-judge",
                                        meta={"kid": [scores[win], scores[lose]], "prompt_index": index}))  # fmt: skip
    return pairs, ties


def _by_prompt(pairs: list[PreferencePair]) -> dict[str, list[PreferencePair]]:
    groups: dict[str, list[PreferencePair]] = {}
    for pair in pairs:
        groups.setdefault(pair.prompt[-1].content, []).append(pair)
    return groups


def best_against_worst(pairs: list[PreferencePair]) -> list[PreferencePair]:
    """One pair per prompt for DPO: the widest kid-score gap, which is the prompt's best answer
    against its worst. Pairs without kid scores (people's votes) count as gap 0: the first is kept."""

    def gap(pair: PreferencePair) -> float:
        high, low = pair.meta.get("kid", (0.0, 0.0))
        return high - low

    return [max(group, key=gap) for group in _by_prompt(pairs).values()]


def dpo_training_pairs(pairs: list[PreferencePair], size: DemoSize) -> list[PreferencePair]:
    return list(pairs) if size.dpo_all_pairs else best_against_worst(pairs)


def split_by_prompt(pairs: list[PreferencePair], every: int = HELD_OUT_EVERY) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held out): the pairs of every `every`-th prompt, in order of first appearance, are
    held out whole, so the reward model is scored on answers it never saw."""
    train, held_out = [], []
    for n, group in enumerate(_by_prompt(pairs).values()):
        (held_out if n % every == every - 1 else train).extend(group)
    return train, held_out


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
    from .runlog import read_jsonl
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

    per_prompt = 2 if human else size.samples_per_prompt
    _say(f"[3/{stages}] sampling {per_prompt} answers per training prompt (up to {size.max_new_tokens} tokens each)")
    samples = generate_completions(policy, tokenizer, [user_prompt(p) for p in train_prompts], per_prompt,
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
    files = {name: root / f"{name}.jsonl" for name in ("pairs", "rm_train", "rm_held_out", "dpo_pairs")}
    rm_train, rm_held_out = split_by_prompt(pairs)
    dpo_pairs = dpo_training_pairs(pairs, size)
    for name, rows in zip(files, (pairs, rm_train, rm_held_out, dpo_pairs), strict=True):
        write_jsonl(rows, files[name])
    _say(f"      {len(pairs)} pairs ({ties} {left_out} left out) -> {files['pairs']}")

    common = dict(model=model, lora=True, seed=seed, batch_size=4, max_length=192, max_prompt_length=64,
                  lora_r=16, lora_alpha=32, overwrite=True)  # fmt: skip
    which_dpo_pairs = "every pair" if size.dpo_all_pairs else "each prompt's best answer against its worst"
    held_out_note = f", scored on {len(rm_held_out)} pairs of prompts it never sees" if rm_held_out else ""
    _say(f"[5/{stages}] reward model on {len(rm_train)} pairs{held_out_note}; "
         f"DPO with LoRA on {len(dpo_pairs)} pairs ({which_dpo_pairs})")  # fmt: skip
    rm_out = train_reward_model(resolve_config(RMConfig, None, common | dict(
        data=str(files["rm_train"]), eval_data=str(files["rm_held_out"]) if rm_held_out else None,
        out=str(root / "rm"), epochs=size.rm_epochs, lr=size.rm_lr, lora_top_layers=size.rm_top_layers)), show_progress=show)  # fmt: skip
    dpo_out = train_dpo(resolve_config(DPOConfig, None, common | dict(
        data=str(files["dpo_pairs"]), out=str(root / "dpo"), epochs=size.dpo_epochs, lr=2e-4, beta=size.dpo_beta,
        warmup_ratio=0.1)), show_progress=show)  # fmt: skip

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
    generations = read_jsonl(root / "generations.jsonl")
    result["readability_grade"] = {
        "policy_mean": _mean_grade(g["policy"] for g in generations),
        "ref_mean": _mean_grade(g["reference"] for g in generations),
        "measure": "Flesch-Kincaid grade level (textstat); lower = easier",
    }
    runs = {"rm": str(rm_out), "dpo": str(dpo_out)} | {PPO_FOLDERS[k]: str(v) for k, v in ppo_runs.items()}
    result["demo"] = {"seconds": round(time.perf_counter() - started, 1), "pairs": len(pairs), "near_ties": ties,
                      "dpo_pairs": len(dpo_pairs), "labels": "human" if human else "kid judge", "quick": quick,
                      "runs": runs}  # fmt: skip
    result["reward_model"] = _reward_model_summary(rm_out, len(rm_train), rm_held_out, files["rm_held_out"])
    result["examples"] = _before_after(generations, 3)
    from .report import insert_section, proxy_gold_section, reward_model_section

    if rm_held_out:
        insert_section(root / "report.html", reward_model_section(result["reward_model"], _ranked_by(result)))
    if ppo:
        result["ppo"] = _ppo_summary(ppo_runs, ppo_evals)
        result["ppo_kl_budget"] = size.kl_budget
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
        # Small on purpose (two minutes each on a CPU): short answers, LoRA, a head on the policy
        # trunk for the value (no second model), a high lr so the policy moves within a dozen rollouts.
        settings = dict(model=model, prompts=str(prompts_file), reward=f"rm:{rm_dir}", out=str(root / PPO_FOLDERS[label]),
                        iterations=size.ppo_iterations, rollout_batch=size.ppo_rollout, batch_size=4, ppo_epochs=2,
                        max_new_tokens=size.ppo_new_tokens, lr=size.ppo_lr, scheduler="constant", lora=True,
                        lora_r=16, lora_alpha=32, value="shared", seed=seed, overwrite=True,
                        kl_coef=size.ppo_kl_coef if kl_coef is None else kl_coef)  # fmt: skip
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
                          "warnings": _run_warnings(run_dir),
                          "held_out": {"eval": held_out["settings"]["out"], "kl": held_out["kl"]["mean"],
                                       "n_prompts": held_out["n_prompts"],
                                       "proxy_win_rate": held_out["judges"][proxy]["win_rate"],
                                       "gold_win_rate": held_out["judges"][held_out["gold"]]["win_rate"],
                                       "gold_ci95": held_out["judges"][held_out["gold"]]["ci95"]}}  # fmt: skip
    return summary


def _run_warnings(run_dir: Path) -> list[str]:
    """The reward-hacking warnings a training run wrote to its summary.json, by name."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return [warning["name"] for warning in summary.get("warnings") or []]


def _reward_model_summary(rm_dir: Path, train_pairs: int, held_out: list[PreferencePair], held_out_file: Path) -> dict:
    """eval.json's `reward_model`: its accuracy on the held-out prompts' pairs beside the one-rule
    baselines' (`eval/baselines.py`); None without held-out pairs."""
    held_out_pairs = len(held_out)
    metrics = json.loads((rm_dir / "summary.json").read_text(encoding="utf-8"))["metrics"]
    return {"run": str(rm_dir), "train_pairs": train_pairs, "held_out_pairs": held_out_pairs,
            "held_out": str(held_out_file) if held_out_pairs else None,
            "held_out_accuracy": metrics.get("eval/accuracy") if held_out_pairs else None,
            "rule_baselines": rule_accuracies(held_out, RULE_BASELINES) if held_out_pairs else None}  # fmt: skip


def _ranked_by(result: dict) -> str:
    return "the kid judge" if result["demo"]["labels"] == "kid judge" else "your votes"


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
    rm = result["reward_model"]
    if rm["held_out_accuracy"] is not None:
        ranked = "the kid judge ranks them" if result["demo"]["labels"] == "kid judge" else "your votes rank them"
        _say(f"reward model: {rm['held_out_accuracy']:.1%} of {rm['held_out_pairs']} held-out pairs ranked as {ranked}")
        _say("  one-rule baselines on the same pairs: " + ", ".join(f"{name} {accuracy:.1%}" for name, accuracy in rm["rule_baselines"].items()))
    _say(f"DPO: kid-judge win rate vs the base model: {kid['win_rate']:.1%} (95% CI {low:.1%} to {high:.1%}, ties {kid['ties']}, {result['n_prompts']} held-out prompts)")
    _say(f"kid score: {kid['ref_mean']:.3f} -> {kid['policy_mean']:.3f}")
    grade = result["readability_grade"]
    _say(f"readability grade (Flesch-Kincaid, lower = easier): {grade['ref_mean']:.1f} -> {grade['policy_mean']:.1f}")
    _say(f"KL(policy || base): {result['kl']['mean']:.2f} nats;  length: {result['length']['ref_mean']:.0f} -> {result['length']['policy_mean']:.0f} tokens")
    for example in result["examples"]:
        _say(f"\n  {example['prompt']}")
        _say(f"    before ({example['kid_before']:.2f}): {' '.join(example['before'].split())[:300]}")
        _say(f"    after  ({example['kid_after']:.2f}): {' '.join(example['after'].split())[:300]}")
    for label, entry in result.get("ppo", {}).items():
        held_out = entry["held_out"]
        gold_low, gold_high = held_out["gold_ci95"]
        budget = f" (budget {result['ppo_kl_budget']:.0f})" if PPO_RUNS[label] is None else ""
        warned = f"; warnings: {', '.join(entry['warnings'])}" if entry["warnings"] else ""
        _say(f"\nPPO {label}: kid-judge (gold) win rate vs the base model {held_out['gold_win_rate']:.1%} "
             f"(95% CI {gold_low:.1%} to {gold_high:.1%}); reward-model (proxy) win rate {held_out['proxy_win_rate']:.1%}; "
             f"KL {held_out['kl']:.1f} nats{budget}{warned}")  # fmt: skip
        _say(f"  {entry['verdict']}")
    _say(f"report: {root / 'report.html'}")
    _say(f"dashboard: preftune serve --runs {root}")

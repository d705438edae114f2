"""`preftune eval`: a policy against its reference on held-out prompts.

    read prompts -> load judges, policy, reference -> sample both with the same seed
    -> score with every judge -> win rate (+ CI, ties), length-controlled win rate, means,
       reward-length correlation, gold gap -> Monte-Carlo KL(pi || pi_ref) on the policy's samples
    -> DIR/eval.json, DIR/generations.jsonl, DIR/report.html

The statistics live in `winrate.py`, `kl.py` and `lengths.py`; this file orders the work.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.schema import DataError
from .kl import kl_estimate, sequence_log_ratios
from .lengths import length_stats, reward_length_correlation
from .winrate import lc_win_rate, win_rate


@dataclass
class EvalSettings:
    """Everything `preftune eval` takes; the CLI fills it from flags."""

    model: str
    ref: str
    prompts: str
    out: str
    judges: list[str] = field(default_factory=list)
    gold: str | None = None  # a held-out judge; each --judge is then a proxy and the gap is reported
    n: int = 1  # samples per prompt, each policy sample compared with the reference sample of the same index
    max_prompts: int = 0  # 0: all
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: int = 512
    tie_tolerance: float = 0.0  # |score difference| at or below this is a tie
    device: str = "auto"
    human: str | None = None  # labeling database URL: also create a policy-vs-reference project there
    project: str | None = None  # the project's name (default: eval-<out folder name>)


def check_settings(settings: EvalSettings) -> None:
    """User errors as one-line DataErrors, before anything slow happens."""
    if not settings.judges and not settings.gold and not settings.human:
        raise DataError(
            "--judge", 0, "give at least one --judge (sentiment, readability, rm:DIR), a --gold or --human"
        )
    if settings.n < 1:
        raise DataError("-n", 0, f"must be at least 1, got {settings.n}")
    if settings.temperature <= 0:
        raise DataError("--temperature", 0, "must be > 0 (the KL estimate needs sampling)")
    if settings.max_new_tokens < 1:
        raise DataError("--max-new-tokens", 0, "must be at least 1")
    if settings.gold and settings.gold in settings.judges:
        raise DataError("--gold", 0, f"{settings.gold} is also a --judge; the gold judge must be held out")


def judge_report(
    policy_scores: list[float],
    ref_scores: list[float],
    policy_lengths: list[float],
    ref_lengths: list[float],
    prompt_index: list[int],
    tie_tolerance: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """One judge's entry of eval.json from paired scores and lengths (same order on both sides)."""
    rate = win_rate(policy_scores, ref_scores, prompt_index, tie_tolerance)
    controlled = lc_win_rate(
        policy_scores, ref_scores, policy_lengths, ref_lengths, prompt_index, tie_tolerance, seed=seed
    )
    return rate.to_dict() | {
        "lc_win_rate": controlled.lc_win_rate,
        "lc_ci95": list(controlled.lc_ci95) if controlled.lc_ci95 else None,
        "length_coef": controlled.length_coef,
        "policy_mean": _mean(policy_scores),
        "ref_mean": _mean(ref_scores),
        "ref_std": _std(ref_scores),
        "reward_length_corr": {
            "policy": reward_length_correlation(policy_scores, policy_lengths),
            "reference": reward_length_correlation(ref_scores, ref_lengths),
        },
    }


def gold_gap(judges: dict[str, dict], gold: str) -> dict[str, dict[str, float]]:
    """Per proxy judge: how much more the proxy says the policy improved than the gold judge says.

    Two scales: win rates (both in [0, 1]), and standardised effects (policy mean - reference mean)
    / reference std, so judges on different scales compare. A positive gap means the proxy
    overstates the improvement, the signature of over-optimisation (Gao et al. 2022).
    """
    g = judges[gold]
    gold_effect = _effect(g)
    out = {}
    for name, entry in judges.items():
        if name == gold:
            continue
        proxy_effect = _effect(entry)
        out[name] = {
            "gold": gold,
            "win_rate_gap": entry["win_rate"] - g["win_rate"],
            "proxy_effect": proxy_effect,
            "gold_effect": gold_effect,
            "effect_gap": (proxy_effect - gold_effect)
            if proxy_effect is not None and gold_effect is not None
            else None,
        }
    return out


def run_eval(settings: EvalSettings, show_progress: bool | None = None) -> dict[str, Any]:
    """The pipeline (module docstring); returns what it wrote to eval.json."""
    from ..data.formats import read_prompts
    from ..generate import generate_completions
    from ..judges.registry import get_judge, score_batch
    from ..models.load import load_policy
    from ..train.common import pick_device

    check_settings(settings)
    show_progress = True if show_progress is None else show_progress  # a bar on a terminal, else a line every 15 s
    out = Path(settings.out)
    device = pick_device(settings.device)
    prompts = read_prompts(settings.prompts)
    if settings.max_prompts:
        prompts = prompts[: settings.max_prompts]
    judge_specs = list(settings.judges) + ([settings.gold] if settings.gold else [])
    judges = {
        spec: get_judge(spec, device=str(device), batch_size=settings.batch_size) for spec in judge_specs
    }

    policy, tokenizer = load_policy(settings.model, device=device)
    if settings.ref == settings.model:
        reference, ref_tokenizer = policy, tokenizer
    else:
        reference, ref_tokenizer = load_policy(settings.ref, device=device)

    sampling = dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
                    seed=settings.seed, batch_size=settings.batch_size, max_prompt_length=settings.max_prompt_length,
                    show_progress=show_progress)  # fmt: skip
    _note(f"eval: sampling {len(prompts)} prompts x {settings.n} from the policy ({settings.model})")
    pol = generate_completions(policy, tokenizer, prompts, settings.n, **sampling)
    _note(f"eval: sampling {len(prompts)} prompts x {settings.n} from the reference ({settings.ref})")
    ref = generate_completions(reference, ref_tokenizer, prompts, settings.n, **sampling)

    # Flat, aligned lists: row r is prompt r // n, sample r % n, on both sides.
    prompt_index = [i for i in range(len(prompts)) for _ in range(settings.n)]
    flat_prompts = [prompts[i] for i in prompt_index]
    pol_texts = [t for per in pol.texts for t in per]
    ref_texts = [t for per in ref.texts for t in per]
    pol_lengths = [_content_length(c, tokenizer.eos_token_id) for per in pol.completion_ids for c in per]
    ref_lengths = [_content_length(c, ref_tokenizer.eos_token_id) for per in ref.completion_ids for c in per]

    result: dict[str, Any] = {"model": settings.model, "ref": settings.ref, "prompts": settings.prompts,
                              "n_prompts": len(prompts), "samples_per_prompt": settings.n, "judges": {}}  # fmt: skip
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for spec, judge in judges.items():
        _note(f"eval: scoring with {spec}")
        policy_scores = score_batch(judge, flat_prompts, pol_texts)
        ref_scores = score_batch(judge, flat_prompts, ref_texts)
        scores[spec] = (policy_scores, ref_scores)
        result["judges"][spec] = judge_report(policy_scores, ref_scores, pol_lengths, ref_lengths, prompt_index,
                                              settings.tie_tolerance, settings.seed)  # fmt: skip
    if settings.gold:
        result["gold"] = settings.gold
        result["gold_gap"] = gold_gap(result["judges"], settings.gold)

    result["kl"] = _estimate_kl(settings, policy, reference, tokenizer, ref_tokenizer, pol)
    result["length"] = {
        "unit": "tokens",
        "policy_mean": _mean(pol_lengths),
        "ref_mean": _mean(ref_lengths),
        "policy": length_stats(pol_lengths),
        "reference": length_stats(ref_lengths),
        "policy_chars_mean": _mean([len(t) for t in pol_texts]),
        "ref_chars_mean": _mean([len(t) for t in ref_texts]),
        "policy_eos_fraction": _eos_fraction(pol.completion_ids, tokenizer.eos_token_id),
        "ref_eos_fraction": _eos_fraction(ref.completion_ids, ref_tokenizer.eos_token_id),
    }
    result["settings"] = asdict(settings)

    generations = [
        {"prompt_index": i, "sample": r % settings.n, "prompt": [m.to_dict() for m in prompts[i]],
         "policy": pol_texts[r], "reference": ref_texts[r], "policy_tokens": pol_lengths[r], "reference_tokens": ref_lengths[r],
         "scores": {spec: {"policy": s[0][r], "reference": s[1][r]} for spec, s in scores.items()}}
        for r, i in enumerate(prompt_index)
    ]  # fmt: skip
    if settings.human:
        from .human import create_human_project

        result["human"] = create_human_project(
            settings.human, settings.project or f"eval-{out.resolve().name}", flat_prompts, pol_texts, ref_texts,
            prompt_index=prompt_index, seed=settings.seed,
            description=f"Policy `{settings.model}` against reference `{settings.ref}` on {settings.prompts}.",
        )  # fmt: skip
    write_outputs(out, result, generations)
    return result


def write_outputs(out: Path, result: dict[str, Any], generations: list[dict] | None = None) -> None:
    from .html import render_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if generations is not None:
        with (out / "generations.jsonl").open("w", encoding="utf-8") as handle:
            for row in generations:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "report.html").write_text(render_report(result, generations or []), encoding="utf-8")


def _estimate_kl(settings, policy, reference, tokenizer, ref_tokenizer, pol) -> dict[str, Any]:
    if tokenizer.get_vocab() != ref_tokenizer.get_vocab():
        return {
            "mean": None,
            "ci95": None,
            "note": "policy and reference tokenizers differ: sequence KL not computed",
        }
    if policy is reference:
        ratios = [0.0] * sum(len(per) for per in pol.completion_ids)  # the same model: exactly zero
    else:
        _note("eval: scoring the policy's samples under both models for the KL estimate")
        rows_prompt = [p for p, per in zip(pol.prompt_ids, pol.completion_ids, strict=True) for _ in per]
        rows_completion = [c for per in pol.completion_ids for c in per]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ratios = sequence_log_ratios(policy, reference, rows_prompt, rows_completion, pad_id,
                                     temperature=settings.temperature, batch_size=settings.batch_size).tolist()  # fmt: skip
    entry: dict[str, Any] = kl_estimate(ratios).to_dict() | {
        "unit": "nats per completion",
        "temperature": settings.temperature,
    }
    if settings.top_p < 1.0:
        entry["note"] = (
            "top_p < 1 truncates sampling; the estimate scores untruncated distributions and is biased"
        )
    return entry


def summary_table(result: dict[str, Any]):
    """A rich Table of the headline numbers (what the CLI prints)."""
    from rich.table import Table

    table = Table(
        title=f"{result.get('model', 'policy')} vs {result.get('ref', 'reference')} ({result['n_prompts']} prompts)"
    )
    for column in (
        "judge",
        "win rate [95% CI]",
        "ties",
        "LC win rate",
        "policy mean",
        "ref mean",
        "r(score, length)",
    ):
        table.add_column(column)
    for name, entry in result["judges"].items():
        corr = (entry.get("reward_length_corr") or {}).get("policy", {}).get("pearson")
        table.add_row(
            name + (" (gold)" if name == result.get("gold") else ""),
            f"{entry['win_rate']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]",
            str(entry["ties"]),
            _fmt(entry.get("lc_win_rate")),
            _fmt(entry.get("policy_mean")),
            _fmt(entry.get("ref_mean")),
            _fmt(corr, "{:+.2f}"),
        )
    kl = result.get("kl")
    if kl and kl.get("mean") is not None:
        table.caption = f"KL(pi||pi_ref) = {kl['mean']:.3f} [{kl['ci95'][0]:.3f}, {kl['ci95'][1]:.3f}] nats per completion"
    if "length" in result:
        table.caption = (table.caption or "") + (
            f"; mean length {result['length']['policy_mean']:.1f} vs {result['length']['ref_mean']:.1f} tokens"
        )
    for proxy, gap in (result.get("gold_gap") or {}).items():
        table.caption = (table.caption or "") + f"; {proxy} - gold win rate: {gap['win_rate_gap']:+.3f}"
    return table


def _content_length(completion: list[int], eos_id: int) -> int:
    """Tokens of text, not counting the closing EOS."""
    return len(completion) - (1 if completion and completion[-1] == eos_id else 0)


def _eos_fraction(completion_ids, eos_id: int) -> float:
    rows = [c for per in completion_ids for c in per]
    return sum(1 for c in rows if c and c[-1] == eos_id) / max(len(rows), 1)


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _std(values) -> float | None:
    values = list(values)
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def _effect(entry: dict) -> float | None:
    if entry.get("policy_mean") is None or not entry.get("ref_std"):
        return None
    return (entry["policy_mean"] - entry["ref_mean"]) / entry["ref_std"]


def _fmt(value, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def _note(text: str) -> None:
    print(text, file=sys.stderr)


__all__ = ["EvalSettings", "gold_gap", "judge_report", "run_eval", "summary_table", "write_outputs"]

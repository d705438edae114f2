"""Reward-hacking and instability detectors over a run folder's `metrics.jsonl` and `samples.jsonl`.

Each detector looks at logged series (DESIGN.md section 4 names) and returns a named warning with
its evidence (the steps and the values it looked at), or nothing. They are heuristics: each says
what it saw, and the thresholds live in one `Thresholds` object so a user can tighten or loosen them.

- `kl_runaway`: the KL to the reference keeps above its target (--target-kl) or, with no target,
  climbs steadily past `kl_limit` nats. The policy is leaving the region where the reward model
  was trained (Ziegler et al. 2019; Gao et al. 2022).
- `length_drift`: completion length moves a lot while the reward rises, and the two move together:
  the reward may be paying for length (Singhal et al. 2023).
- `proxy_gold_divergence`: the optimised reward keeps rising after a held-out gold judge peaked and
  started to fall: over-optimisation in the sense of Gao et al. 2022.
- `entropy_collapse`: the policy's entropy falls to a small fraction of its start: it is
  collapsing onto a few completions (mode collapse).
- `high_clip_fraction`: PPO clips a large share of its ratios: the updates are too large for the
  trust region (Schulman et al. 2017; 0.1-0.2 is the usual healthy range).
- `dpo_chosen_logps_falling`: DPO widens the margin by pushing both responses down, the chosen one
  included (Pal et al. 2024, "Smaug"; Rafailov et al. 2024). The policy moves probability to
  sequences that neither response is.

"Rising"/"falling" are trends over logged points: Spearman's rho of value against step beyond
+-`trend_rho`, and the mean of the last quarter of points above (below) the first quarter's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runlog import read_metrics, read_run_config, read_samples
from .lengths import spearman


@dataclass
class Thresholds:
    min_points: int = 4  # logged points a series needs before any trend is read off it
    window: float = 0.25  # head/tail windows: this fraction of the points (at least one)
    trend_rho: float = 0.6  # |Spearman rho| of value vs step for "rising" / "falling"
    kl_target_ratio: float = 1.5  # KL above ratio x target ...
    kl_sustained_points: int = 3  # ... for this many consecutive final points
    kl_limit: float = 10.0  # nats per completion; with no target, a steady climb past this fires
    length_change: float = 0.3  # relative change of mean length, first to last quarter
    length_reward_corr: float = 0.6  # |Pearson r| across logged points of length and reward
    entropy_ratio: float = 0.3  # final-quarter entropy below this fraction of the first quarter's
    clipfrac_limit: float = 0.2
    clipfrac_share: float = 0.5  # share of logged points above the limit
    chosen_drop_relative: float = 0.1  # logps/chosen falls by this fraction of its start ...
    chosen_drop_nats: float = 2.0  # ... and by at least this many nats


# Per warning name: what it means (one line) and what to try. Shown with every warning, in the
# terminal at the end of a run, on the dashboard and in summary.json.
ABOUT: dict[str, tuple[str, str]] = {
    "kl_runaway": (
        "the policy is leaving the reference behind, past where the reward signal can be trusted",
        "raise --kl-coef, set or lower --target-kl, or lower --lr; read the latest samples for degenerate text",
    ),
    "length_drift": (
        "the reward may be paying for length rather than for better answers",
        "compare early and late samples; try --missing-eos-penalty or --normalize-scores, and judge "
        "with a length-controlled win rate (preftune eval)",
    ),
    "proxy_gold_divergence": (
        "the optimised reward keeps rising while a held-out gold judge gets worse: over-optimisation",
        "keep the checkpoint nearest the gold peak, stop earlier, or raise --kl-coef",
    ),
    "entropy_collapse": (
        "the policy is collapsing onto a few completions (mode collapse)",
        "raise --kl-coef or lower --lr; check the samples for repeated text",
    ),
    "high_clip_fraction": (
        "PPO's updates are too large for its clip range, so much of each update is cut off",
        "lower --lr or --ppo-epochs, or set --max-approx-kl",
    ),
    "dpo_chosen_logps_falling": (
        "DPO widens the margin by pushing both responses down, the chosen one included",
        "add --sft-weight, lower --lr, or raise --beta",
    ),
}


@dataclass
class HackingWarning:
    """A named warning with the evidence behind it: `steps` and, per series name, the values.

    `explanation` (what it means) and `hint` (what to try) default to the name's entry in `ABOUT`.
    """

    name: str
    message: str
    steps: list[int]
    values: dict[str, list[float]] = field(default_factory=dict)
    explanation: str = ""
    hint: str = ""

    def __post_init__(self) -> None:
        explanation, hint = ABOUT.get(self.name, ("", ""))
        self.explanation = self.explanation or explanation
        self.hint = self.hint or hint

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- series


Series = tuple[list[int], list[float]]


def series(rows: list[dict[str, Any]], key: str) -> Series:
    """(steps, values) of one metric, skipping rows without a finite number for it."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            steps.append(int(row.get("step", len(steps))))
            values.append(float(value))
    return steps, values


def first_series(
    rows: list[dict[str, Any]], keys: tuple[str, ...], min_points: int
) -> tuple[str, Series] | None:
    for key in keys:
        found = series(rows, key)
        if len(found[0]) >= min_points:
            return key, found
    return None


def sample_series(samples: list[dict[str, Any]]) -> dict[str, Series]:
    """Per-step means from samples.jsonl: policy score, gold score, policy length in words."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for row in samples:
        bucket = by_step.setdefault(int(row.get("step", 0)), {})
        for key, name in (("policy_score", "samples/policy_score"), ("policy_gold_score", "samples/gold_score"),
                          ("gold_score", "samples/gold_score")):  # fmt: skip
            if isinstance(row.get(key), int | float):
                bucket.setdefault(name, []).append(float(row[key]))
        if isinstance(row.get("policy"), str):
            bucket.setdefault("samples/policy_words", []).append(float(len(row["policy"].split())))
    out: dict[str, Series] = {}
    for step in sorted(by_step):
        for name, values in by_step[step].items():
            steps, means = out.setdefault(name, ([], []))
            steps.append(step)
            means.append(sum(values) / len(values))
    return out


# ---------------------------------------------------------------------------------- trends


def _window(n: int, t: Thresholds) -> int:
    return max(1, int(round(n * t.window)))


def head_tail(values: list[float], t: Thresholds) -> tuple[float, float]:
    k = _window(len(values), t)
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


def rising(steps: list[int], values: list[float], t: Thresholds) -> bool:
    if len(values) < 3:
        return False
    rho = spearman(steps, values)
    head, tail = head_tail(values, t)
    return rho is not None and rho >= t.trend_rho and tail > head


def falling(steps: list[int], values: list[float], t: Thresholds) -> bool:
    return rising(steps, [-v for v in values], t)


def aligned(a: Series, b: Series) -> tuple[list[int], list[float], list[float]]:
    """The steps both series have, with their values."""
    b_at = dict(zip(*b, strict=True))
    steps = [s for s in a[0] if s in b_at]
    a_at = dict(zip(*a, strict=True))
    return steps, [a_at[s] for s in steps], [b_at[s] for s in steps]


# ---------------------------------------------------------------------------------- detectors

KL_KEYS = ("objective/kl", "eval/kl")
REWARD_KEYS = ("objective/scores", "eval/scores", "samples/policy_score")
LENGTH_KEYS = ("completions/mean_length", "eval/mean_length", "samples/policy_words")
GOLD_KEYS = (
    "eval/gold_scores",
    "eval/gold_score",
    "eval/gold",
    "objective/gold_scores",
    "samples/gold_score",
)


def detect_kl_runaway(rows, config, t: Thresholds) -> HackingWarning | None:
    found = first_series(rows, KL_KEYS, t.min_points)
    if not found:
        return None
    key, (steps, values) = found
    target = float(config.get("target_kl") or 0.0)
    if target > 0:
        k = t.kl_sustained_points
        limit = t.kl_target_ratio * target
        if len(values) >= k and all(v > limit for v in values[-k:]):
            return HackingWarning(
                "kl_runaway",
                f"{key} stayed above {t.kl_target_ratio:g} x the target {target:g} nats for the last {k} logged "
                f"points, reaching {values[-1]:.3g} at step {steps[-1]}",
                steps[-k:], {key: values[-k:]},
            )  # fmt: skip
        return None
    if rising(steps, values, t) and values[-1] > t.kl_limit:
        return HackingWarning(
            "kl_runaway",
            f"{key} climbed steadily from {values[0]:.3g} to {values[-1]:.3g} nats (no --target-kl; limit {t.kl_limit:g})",
            steps, {key: values},
        )  # fmt: skip
    return None


def detect_length_drift(rows, series_from_samples, t: Thresholds) -> HackingWarning | None:
    reward = _pick(rows, series_from_samples, REWARD_KEYS, t)
    length = _pick(rows, series_from_samples, LENGTH_KEYS, t)
    if not reward or not length:
        return None
    steps, rewards, lengths = aligned(reward[1], length[1])
    if len(steps) < t.min_points or not rising(steps, rewards, t):
        return None
    head, tail = head_tail(lengths, t)
    if head <= 0 or abs(tail / head - 1) < t.length_change:
        return None
    r = float(np.corrcoef(rewards, lengths)[0, 1]) if np.std(rewards) > 0 and np.std(lengths) > 0 else 0.0
    if abs(r) < t.length_reward_corr:
        return None
    direction = "grew" if tail > head else "shrank"
    return HackingWarning(
        "length_drift",
        f"{length[0]} {direction} from {head:.3g} to {tail:.3g} ({100 * (tail / head - 1):+.0f}%) while {reward[0]} "
        f"rose; across logged steps they correlate at r = {r:+.2f}",
        steps, {reward[0]: rewards, length[0]: lengths},
    )  # fmt: skip


def detect_proxy_gold_divergence(rows, series_from_samples, t: Thresholds) -> HackingWarning | None:
    proxy = _pick(rows, series_from_samples, REWARD_KEYS, t)
    gold = _pick(rows, series_from_samples, GOLD_KEYS, t)
    if not proxy or not gold:
        return None
    steps, proxies, golds = aligned(proxy[1], gold[1])
    if len(steps) < t.min_points:
        return None
    peak = int(np.argmax(golds))
    after = slice(peak, None)
    if len(steps) - peak < 3:  # too few points after the peak to call a fall
        return None
    if not (falling(steps[after], golds[after], t) and rising(steps[after], proxies[after], t)):
        return None
    return HackingWarning(
        "proxy_gold_divergence",
        f"{gold[0]} peaked at {golds[peak]:.3g} (step {steps[peak]}) and fell to {golds[-1]:.3g} while {proxy[0]} "
        f"kept rising, {proxies[peak]:.3g} -> {proxies[-1]:.3g}",
        steps, {proxy[0]: proxies, gold[0]: golds},
    )  # fmt: skip


def detect_entropy_collapse(rows, config, t: Thresholds) -> HackingWarning | None:
    found = first_series(rows, ("objective/entropy", "eval/entropy"), t.min_points)
    if not found:
        return None
    key, (steps, values) = found
    head, tail = head_tail(values, t)
    if head <= 0 or tail > t.entropy_ratio * head or not falling(steps, values, t):
        return None
    return HackingWarning(
        "entropy_collapse",
        f"{key} fell from {head:.3g} to {tail:.3g} ({100 * tail / head:.0f}% of its start)",
        steps, {key: values},
    )  # fmt: skip


def detect_high_clip_fraction(rows, config, t: Thresholds) -> HackingWarning | None:
    found = first_series(rows, ("policy/clipfrac_avg",), 2)
    if not found:
        return None
    key, (steps, values) = found
    high = [(s, v) for s, v in zip(steps, values, strict=True) if v > t.clipfrac_limit]
    if len(high) < 2 or len(high) < t.clipfrac_share * len(values):
        return None
    return HackingWarning(
        "high_clip_fraction",
        f"{key} was above {t.clipfrac_limit:g} at {len(high)} of {len(values)} logged steps (max {max(v for _, v in high):.3g})",
        [s for s, _ in high], {key: [v for _, v in high]},
    )  # fmt: skip


def detect_dpo_chosen_falling(rows, config, t: Thresholds) -> HackingWarning | None:
    found = first_series(rows, ("eval/logps/chosen", "logps/chosen"), t.min_points)
    if not found:
        return None
    key, (steps, values) = found
    head, tail = head_tail(values, t)
    drop = head - tail
    if drop < max(t.chosen_drop_nats, t.chosen_drop_relative * abs(head)) or not falling(steps, values, t):
        return None
    evidence = {key: values}
    rejected_key = key.replace("chosen", "rejected")
    rejected = dict(zip(*series(rows, rejected_key), strict=True))
    if all(s in rejected for s in steps):
        evidence[rejected_key] = [rejected[s] for s in steps]
    return HackingWarning(
        "dpo_chosen_logps_falling",
        f"{key} fell from {head:.4g} to {tail:.4g} nats: the chosen responses lose likelihood too, and the mass "
        "moves to sequences neither response is",
        steps, evidence,
    )  # fmt: skip


def _pick(
    rows, from_samples: dict[str, Series], keys: tuple[str, ...], t: Thresholds
) -> tuple[str, Series] | None:
    for key in keys:
        found = from_samples.get(key) if key.startswith("samples/") else series(rows, key)
        if found and len(found[0]) >= t.min_points:
            return key, found
    return None


DETECTORS: dict[str, Callable] = {
    "kl_runaway": lambda rows, samples, config, t: detect_kl_runaway(rows, config, t),
    "length_drift": lambda rows, samples, config, t: detect_length_drift(rows, samples, t),
    "proxy_gold_divergence": lambda rows, samples, config, t: detect_proxy_gold_divergence(rows, samples, t),
    "entropy_collapse": lambda rows, samples, config, t: detect_entropy_collapse(rows, config, t),
    "high_clip_fraction": lambda rows, samples, config, t: detect_high_clip_fraction(rows, config, t),
    "dpo_chosen_logps_falling": lambda rows, samples, config, t: detect_dpo_chosen_falling(rows, config, t),
}


def check_metrics(
    rows: list[dict[str, Any]],
    samples: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    thresholds: Thresholds | None = None,
) -> list[HackingWarning]:
    """Run every detector on metric rows (+ sample rows, + the run's config as a dict)."""
    t = thresholds or Thresholds()
    from_samples = sample_series(samples or [])
    found = (detector(rows, from_samples, config or {}, t) for detector in DETECTORS.values())
    return [w for w in found if w is not None]


def check_run(run_dir: str | Path, thresholds: Thresholds | None = None) -> list[HackingWarning]:
    """Read a run folder's metrics.jsonl, samples.jsonl and config.yaml; return its warnings."""
    return check_metrics(read_metrics(run_dir), read_samples(run_dir), read_run_config(run_dir), thresholds)


def _styled_lines(warnings: list[HackingWarning], max_points: int) -> list[tuple[str, str]]:
    """(rich style, text) per line: a header, then per warning its name and explanation, the
    message, the evidence (up to `max_points` steps and values) and what to try."""
    if not warnings:
        return [("green", "reward-hacking checks: no warnings")]
    count = f"{len(warnings)} warning{'s' if len(warnings) > 1 else ''}"
    lines = [("bold yellow", f"reward-hacking checks: {count}")]
    for warning in warnings:
        lines.append(("bold yellow", f"  warning [{warning.name}]: {warning.explanation}"))
        lines.append(("", f"    {warning.message}"))
        keep = _spread(len(warning.steps), max_points)
        lines.append(("dim", "    step: " + ", ".join(str(warning.steps[i]) for i in keep)))
        for name, values in warning.values.items():
            lines.append(("dim", f"    {name}: " + ", ".join(f"{values[i]:.4g}" for i in keep)))
        if warning.hint:
            lines.append(("cyan", f"    try: {warning.hint}"))
    return lines


def format_warnings(warnings: list[HackingWarning], max_points: int = 6) -> str:
    """Plain text for the terminal: one block per warning, with up to `max_points` evidence points."""
    return "\n".join(text for _, text in _styled_lines(warnings, max_points))


def print_warnings(warnings: list[HackingWarning], console=None, max_points: int = 6) -> None:
    """`format_warnings` as one rich block on stderr (or `console`). Lines are never wrapped, so a
    log stays greppable, and names and values are plain text, never read as rich markup."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console(stderr=True)
    block = Text("\n").join(Text(text, style=style) for style, text in _styled_lines(warnings, max_points))
    console.print(block, soft_wrap=True)


def _spread(n: int, k: int) -> list[int]:
    """Up to k indices spread evenly over 0..n-1, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})

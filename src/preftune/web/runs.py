"""Reading run folders for the dashboard and the reports: runs, their charts, samples and warnings.

A run folder (`runs/<id>/`, written by `preftune.runlog.RunLog`) holds `config.yaml`,
`metrics.jsonl`, `samples.jsonl` and, once finished, `summary.json`. Everything here reads those
files and nothing else, never imports torch, and tolerates a run that is being written right now
(`read_metrics` stops at a half-written last line).

Also here: where the chart library comes from. Plotly is served from the installed `plotly`
package (no CDN), to the dashboard as a file and into reports inlined.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from preftune.eval.hacking import check_metrics

# One reader of run folders, in runlog; `runs.read_samples` / `runs.read_config` stay importable here.
from preftune.runlog import read_metrics, read_samples
from preftune.runlog import read_run_config as read_config

Row = dict[str, Any]


@dataclass(frozen=True)
class Chart:
    """One plot: lines of (x metric, y metric) pairs; x is "step" for curves over training."""

    id: str
    title: str
    lines: tuple[tuple[str, str], ...]
    x_title: str = "step"
    x_sqrt: bool = False  # plot sqrt(x): the score-vs-sqrt(KL) chart

    def metrics(self) -> set[str]:
        return {name for pair in self.lines for name in pair} - {"step"}

    def to_dict(self) -> dict:
        return asdict(self)


def _over_steps(chart_id: str, title: str, *names: str, with_eval: bool = True) -> Chart:
    # A curve per metric over steps, plus its held-out twin "eval/NAME" when the trainer logs one.
    lines = [("step", n) for n in names] + ([("step", f"eval/{n}") for n in names] if with_eval else [])
    return Chart(chart_id, title, tuple(lines))


DPO_CHARTS = (
    _over_steps("loss", "Loss", "loss"),
    _over_steps("rewards", "Implicit rewards", "rewards/chosen", "rewards/rejected", "rewards/margins"),
    _over_steps("accuracies", "Reward accuracy", "rewards/accuracies"),
    _over_steps("logps", "Log-probs of the responses", "logps/chosen", "logps/rejected"),
    _over_steps("grad-norm", "Gradient norm", "grad_norm", with_eval=False),
    _over_steps("learning-rate", "Learning rate", "learning_rate", with_eval=False),
)
PPO_CHARTS = (
    Chart(
        "scores",
        "Score",
        (("step", "objective/scores"), ("step", "eval/scores"), ("step", "eval/ref_scores")),
    ),
    Chart("kl", "KL from the reference", (("step", "objective/kl"), ("step", "eval/kl"))),
    Chart(
        "score-vs-sqrt-kl",
        "Score against √KL",
        (("objective/kl", "objective/scores"), ("eval/kl", "eval/scores")),
        x_title="√KL (nats)",
        x_sqrt=True,
    ),
    _over_steps("kl-coef", "KL coefficient", "kl_coef", with_eval=False),
    _over_steps(
        "rlhf-reward", "RLHF reward", "objective/rlhf_reward", "objective/non_score_reward", with_eval=False
    ),
    _over_steps("clipfrac", "Clip fraction", "policy/clipfrac_avg", "val/clipfrac_avg", with_eval=False),
    _over_steps("approxkl", "Approximate KL per update", "policy/approxkl_avg", with_eval=False),
    _over_steps("entropy", "Entropy", "objective/entropy", with_eval=False),
    Chart(
        "length",
        "Mean completion length",
        (("step", "completions/mean_length"), ("step", "eval/mean_length")),
    ),
    _over_steps("ppo-losses", "PPO losses", "loss/policy_avg", "loss/value_avg", with_eval=False),
)
# grpo (and its RLOO / REINFORCE++ settings): TRL's GRPOTrainer names, plus the KL and held-out axes PPO uses.
GRPO_CHARTS = (
    Chart("scores", "Reward", (("step", "reward"), ("step", "eval/scores"), ("step", "eval/ref_scores"))),
    Chart("kl", "KL from the reference", (("step", "objective/kl"), ("step", "eval/kl"))),
    Chart(
        "score-vs-sqrt-kl",
        "Reward against √KL",
        (("objective/kl", "reward"), ("eval/kl", "eval/scores")),
        x_title="√KL (nats)",
        x_sqrt=True,
    ),
    _over_steps("reward-spread", "Reward spread within groups", "reward_std", "frac_reward_zero_std", with_eval=False),
    _over_steps("token-kl", "Per-token KL estimate", "kl", with_eval=False),
    _over_steps("entropy", "Entropy", "entropy", with_eval=False),
    _over_steps("clip-ratio", "Clipped tokens", "clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean", with_eval=False),
    Chart("length", "Mean completion length", (("step", "completions/mean_length"), ("step", "eval/mean_length"))),
    _over_steps("grpo-loss", "Loss", "loss", "policy_loss", with_eval=False),
)
RM_CHARTS = (
    _over_steps("loss", "Loss", "loss"),
    _over_steps("accuracy", "Accuracy", "accuracy"),
    _over_steps("margin", "Reward margin", "margin"),
    _over_steps("reward-range", "Rewards", "mean_reward", "min_reward", "max_reward"),
    _over_steps("grad-norm", "Gradient norm", "grad_norm", with_eval=False),
    _over_steps("learning-rate", "Learning rate", "learning_rate", with_eval=False),
)
SFT_CHARTS = (
    _over_steps("loss", "Loss", "loss"),
    _over_steps("grad-norm", "Gradient norm", "grad_norm", with_eval=False),
    _over_steps("learning-rate", "Learning rate", "learning_rate", with_eval=False),
)
KTO_CHARTS = (
    _over_steps("loss", "Loss", "loss"),
    _over_steps("rewards", "Implicit rewards (chosen: thumbs up, rejected: thumbs down)", "rewards/chosen", "rewards/rejected", "rewards/margins"),
    _over_steps("kto-kl", "KL estimate (KTO's reference point z0)", "kl"),
    _over_steps("logps", "Log-probs of the answers", "logps/chosen", "logps/rejected"),
    _over_steps("grad-norm", "Gradient norm", "grad_norm", with_eval=False),
    _over_steps("learning-rate", "Learning rate", "learning_rate", with_eval=False),
)
CHARTS_BY_KIND = {
    "dpo": DPO_CHARTS, "kto": KTO_CHARTS, "ppo": PPO_CHARTS, "grpo": GRPO_CHARTS, "rm": RM_CHARTS, "sft": SFT_CHARTS, "run": (),
}
# Bookkeeping columns that are not worth a chart of their own.
NOT_CHARTED = {"step", "time", "epoch", "num_tokens", "eval/num_tokens"}


# ---- runs ---------------------------------------------------------------------------------------


def _is_run(path: Path) -> bool:
    return path.is_dir() and ((path / "metrics.jsonl").exists() or (path / "config.yaml").exists())


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """The run folders directly under `root`, newest activity first, with a one-line status each."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for path in sorted(p for p in root.iterdir() if _is_run(p)):
        rows = read_metrics(path)
        metrics_file = path / "metrics.jsonl"
        runs.append({
            "id": path.name,
            "kind": run_kind(read_config(path), rows),
            "steps": max((r.get("step", 0) for r in rows), default=0),
            "finished": (path / "summary.json").exists(),
            "updated": metrics_file.stat().st_mtime if metrics_file.exists() else (path / "config.yaml").stat().st_mtime,
            "has_report": (path / "report.html").exists(),
        })  # fmt: skip
    return sorted(runs, key=lambda r: r["updated"], reverse=True)


def find_run(root: str | Path, run_id: str) -> Path | None:
    """The folder of run `run_id` under `root`, or None. Only a direct child counts: an id with a
    path separator or '..' never reaches outside the runs folder."""
    if not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id:
        return None
    path = Path(root) / run_id
    return path if _is_run(path) else None


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def run_kind(config: dict[str, Any], rows: list[Row]) -> str:
    """dpo, kto, ppo, grpo, rm, sft or run: from the metric names logged, else from the config's fields."""
    names = set().union(*rows[:20]) if rows else set()
    if "frac_reward_zero_std" in names or "num_generations" in config:
        return "grpo"
    if names & {"objective/kl", "objective/scores", "eval/scores"} or "rollout_batch" in config:
        return "ppo"
    if "desirable_weight" in config:  # before dpo: KTO logs rewards/margins too
        return "kto"
    if "rewards/margins" in names or {"beta", "ref"} <= config.keys():
        return "dpo"
    if {"accuracy", "mean_reward"} <= names or "center_coef" in config:
        return "rm"
    if "loss" in names or "model" in config:
        return "sft"
    return "run"


def charts_for(kinds: list[str], rows: list[Row]) -> list[Chart]:
    """The charts of each kind (in order, without repeats), then one chart per other numeric metric."""
    charts: list[Chart] = []
    for kind in kinds:
        charts += [c for c in CHARTS_BY_KIND.get(kind, ()) if c.id not in {seen.id for seen in charts}]
    covered = set().union(*(c.metrics() for c in charts)) if charts else set()
    extra = sorted(
        {name for row in rows for name, value in row.items() if isinstance(value, int | float)}
        - covered
        - NOT_CHARTED
    )
    for name in extra:
        charts.append(
            Chart("metric-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"), name, (("step", name),))
        )
    return charts


def final_eval(rows: list[Row], summary: dict[str, Any]) -> dict[str, float]:
    """The last value of every eval/ metric; summary.json's values win once the run has finished."""
    finals: dict[str, float] = {}
    for row in rows:
        finals |= {k: v for k, v in row.items() if k.startswith("eval/") and isinstance(v, int | float)}
    finals |= {
        k: v
        for k, v in summary.get("metrics", {}).items()
        if k.startswith("eval/") and isinstance(v, int | float)
    }
    return {k: v for k, v in sorted(finals.items()) if k not in NOT_CHARTED}


# ---- reward-hacking warnings ------------------------------------------------------------------


def run_warnings(
    run_dir: str | Path, rows: list[Row] | None = None, samples: list[Row] | None = None
) -> list[dict[str, Any]]:
    """The warnings of `preftune.eval.hacking.check_run` for a run folder, as JSON-ready dicts.

    The dashboard shows these and the trainers print them at the end of a run (train/setup.py's
    `finish_run`), so there is one set of detectors. Pass `rows` / `samples` already read from the folder to skip reading them again.
    """
    rows = read_metrics(run_dir) if rows is None else rows
    samples = read_samples(run_dir) if samples is None else samples
    return [w.to_dict() for w in check_metrics(rows, samples, read_config(run_dir))]


# ---- chart payloads -----------------------------------------------------------------------------


def chart_points(chart: Chart, rows: list[Row]) -> list[dict[str, Any]]:
    """Per line of `chart`: {"name", "x", "y"} from the rows that carry both values (for reports)."""
    series = []
    for x_name, y_name in chart.lines:
        xs, ys = [], []
        for row in rows:
            x, y = row.get(x_name), row.get(y_name)
            if isinstance(x, int | float) and isinstance(y, int | float):
                xs.append(math.sqrt(max(x, 0.0)) if chart.x_sqrt else x)
                ys.append(y)
        if xs:
            series.append({"name": y_name if x_name == "step" else f"{y_name} vs {x_name}", "x": xs, "y": ys})
    return series


# ---- plotly, from the installed package ---------------------------------------------------------


def plotly_js_path() -> Path:
    """plotly.min.js inside the installed `plotly` wheel (raises RuntimeError when missing)."""
    try:
        import plotly
    except ImportError as err:
        raise RuntimeError("charts need the `plotly` package: pip install plotly") from err
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise RuntimeError(f"plotly is installed but {path} is missing; reinstall plotly")
    return path


# Plotly injects its base stylesheet (positions of its SVG layers, cursors, hover labels) with an
# inline <style>, which the dashboard's Content-Security-Policy refuses. Plotly skips the injection
# when the page already has an element with id "plotly.js-style-global" and class
# "no-inline-styles" (plotly.js PR #7109), so the dashboard links this stylesheet under that id.
# The rules are read out of the installed plotly.min.js, where they live as a JS object literal
# mapping selectors ("X" standing for ".js-plotly-plot .plotly") to declarations.
_PLOTLY_RULE = re.compile(
    r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*:\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)
_PLOTLY_CSS_FALLBACK = (
    ".js-plotly-plot .plotly .main-svg{position:absolute;top:0;left:0;pointer-events:none;}\n"
    ".js-plotly-plot .plotly .main-svg .draglayer{pointer-events:all;}\n"
    ".js-plotly-plot .plotly .modebar{position:absolute;top:2px;right:2px;}\n"
)


_PLOTLY_STYLE_GUARD = re.compile(
    r'if\(!document\.getElementById\("([0-9a-f]{32,64})"\)\)\{var \w+=document\.createElement\("style"\)'
)


@functools.lru_cache(maxsize=1)
def plotly_style_guard_ids() -> tuple[str, ...]:
    """Ids whose presence stops plotly.min.js from injecting its bundled map library's stylesheet.

    That stylesheet (maplibre's, for map traces we never draw) is another inline <style> the CSP
    refuses; the page declares these ids on empty elements so plotly skips it instead of logging
    a CSP violation on every load.
    """
    return tuple(dict.fromkeys(_PLOTLY_STYLE_GUARD.findall(plotly_js_path().read_text(encoding="utf-8"))))


def plotly_css() -> str:
    """Plotly's base stylesheet as CSS text (a minimal fallback if the bundle's layout changed)."""
    source = plotly_js_path().read_text(encoding="utf-8")
    marker = source.find('.replace(/X/g,".js-plotly-plot .plotly")')
    loop = source.rfind(";for(", 0, marker) if marker >= 0 else -1
    start = source.rfind('={"X', 0, loop) if loop >= 0 else -1
    if start < 0:
        return _PLOTLY_CSS_FALLBACK
    rules = []
    for selector, declarations in _PLOTLY_RULE.findall(source[start + 1 : loop]):
        selector = selector[1:-1]
        selector = " ," + selector[1:] if selector.startswith(",") else selector
        selector = selector.replace("X", ".js-plotly-plot .plotly").replace("Y", ".plotly-notifier")
        rules.append(f"{selector}{{{declarations[1:-1]}}}")
    return "\n".join(rules) + "\n" if rules else _PLOTLY_CSS_FALLBACK

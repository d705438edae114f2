"""`preftune report RUN_DIR`: one self-contained HTML file describing a run.

The report holds the resolved config, every dashboard chart of the run (plotly.js inlined from the
installed `plotly` package, the data inlined as JSON), the final eval numbers, the reward-hacking warnings
when it applies, and the sample completions. It needs no server and no network: open it from disk,
attach it to an issue, archive it beside the checkpoints. Every trainer writes one at the end of a
run (`train.setup.finish_run`).

Everything shown comes from the run folder, through the same readers the dashboard uses
(`web/runs.py`); model text is escaped by the template like everywhere else.

`proxy_gold_section` is the panel `preftune demo --ppo` adds to its eval report: the reward
model's score (proxy) and the gold judge's score per PPO iteration for several runs, drawn as
inline SVG (that page carries no scripts), with the numbers from each run's metrics.jsonl beside.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from .data.schema import DataError
from .runlog import read_metrics
from .web import runs

TEMPLATE_DIR = Path(__file__).parent / "web" / "templates"
STATIC_DIR = Path(__file__).parent / "web" / "static"
MAX_SAMPLE_STEPS = 20  # the report keeps the first eval and the last ones, to stay readable


def _inline_script(source: str) -> str:
    # "</script" inside an inlined script would end the element early; "<\/script" means the same
    # to JavaScript (in strings and regexes) and nothing to the HTML parser.
    return source.replace("</script", "<\\/script")


def _json_for_script(value: Any) -> str:
    # JSON inside <script type="application/json">: escape "<" so no "</script>" or "<!--" can
    # appear, whatever text the metrics or configs contain.
    return json.dumps(value, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def _sample_groups(samples: list[dict]) -> list[dict]:
    """Samples grouped by eval step: the first step and the last MAX_SAMPLE_STEPS - 1."""
    steps = sorted({s.get("step", 0) for s in samples})
    if len(steps) > MAX_SAMPLE_STEPS:
        steps = steps[:1] + steps[-(MAX_SAMPLE_STEPS - 1) :]
    return [{"step": step, "samples": [s for s in samples if s.get("step", 0) == step]} for step in steps]


def _duration(rows: list[dict]) -> str:
    times = [r["time"] for r in rows if isinstance(r.get("time"), int | float)]
    if len(times) < 2:
        return "—"
    seconds = max(times) - min(times)
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def render_report(run_dir: str | Path) -> str:
    """The report of the run in `run_dir` as one HTML string."""
    import jinja2

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, 0, "not a folder; give a run folder (the --out of a training command)")
    if not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists():
        raise DataError(run_dir, 0, "not a run folder: it has neither metrics.jsonl nor config.yaml")
    rows = read_metrics(run_dir)
    config = runs.read_config(run_dir)
    summary = runs.read_summary(run_dir)
    kind = runs.run_kind(config, rows)
    charts = runs.charts_for([kind], rows)
    chart_data = [{"id": c.id, "x_title": c.x_title, "series": runs.chart_points(c, rows)} for c in charts]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=jinja2.StrictUndefined
    )
    from markupsafe import Markup

    return environment.get_template("report_page.html").render(
        run_id=run_dir.resolve().name,
        kind=kind,
        config=config,
        charts=charts,
        finals=runs.final_eval(rows, summary),
        warnings=runs.run_warnings(run_dir, rows),
        sample_groups=_sample_groups(runs.read_samples(run_dir)),
        steps=max((r.get("step", 0) for r in rows), default=0),
        finished=bool(summary),
        duration=_duration(rows),
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
        chart_json=Markup(_json_for_script(chart_data)),
        plotly_js=Markup(_inline_script(runs.plotly_js_path().read_text(encoding="utf-8"))),
        report_js=Markup(_inline_script((STATIC_DIR / "report_charts.js").read_text(encoding="utf-8"))),
        report_css=Markup(
            (STATIC_DIR / "report_page.css").read_text(encoding="utf-8").replace("</style", "<\\/style")
        ),
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `run_dir/report.html` (or `out`) and return its path."""
    html = render_report(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a browser refreshing the file mid-write never sees half a report.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(html, encoding="utf-8")
    partial.replace(path)
    return path


# -- the demo's reward-hacking panel: proxy and gold score per PPO iteration, several runs -----------

PROXY_METRIC = "objective/scores"  # the reward model's raw score of each rollout (what PPO maximises)
GOLD_METRIC = "objective/gold_scores"  # the held-out judge's score of the same rollouts (`train_ppo(gold=)`)
_COLORS = ["#1f6fd0", "#d03a1f", "#2a9d4b", "#8a4fc4"]


def ppo_curves(run_dir: str | Path) -> dict[str, list]:
    """Per logged PPO iteration of a run folder: step, proxy score, gold score (None if not logged), KL."""
    rows = [r for r in read_metrics(run_dir) if "objective/kl" in r and PROXY_METRIC in r]
    return {
        "step": [r["step"] for r in rows],
        "proxy": [r[PROXY_METRIC] for r in rows],
        "gold": [r.get(GOLD_METRIC) for r in rows],
        "kl": [r["objective/kl"] for r in rows],
    }


def trend(values: list) -> float | None:
    """Mean of the last third minus mean of the first third: per-iteration scores of a few
    completions are noisy, so single endpoints would overstate or hide a change."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    k = max(1, len(values) // 3)
    return sum(values[-k:]) / k - sum(values[:k]) / k


def _direction(values: list) -> int | None:
    """+1 rose, -1 fell, 0 neither: `trend` against twice its standard error (the spread of the
    per-iteration values within each third). None: under 6 values, too few to estimate a spread."""
    import statistics

    values = [v for v in values if v is not None]
    k = len(values) // 3
    if k < 2:
        return None
    first, last = values[:k], values[-k:]
    error = (statistics.variance(first) / k + statistics.variance(last) / k) ** 0.5
    change = statistics.fmean(last) - statistics.fmean(first)
    return 0 if abs(change) <= 2 * error else (1 if change > 0 else -1)


def describe_run(label: str, curves: dict[str, list]) -> str:
    """One sentence on what the run's numbers show, and never more than they show."""
    proxy, gold = _direction(curves["proxy"]), _direction(curves["gold"])
    if proxy is None or gold is None:
        return f"{label}: too few iterations to tell."
    moved = (f"{label}: proxy {trend(curves['proxy']):+.3f}, gold {trend(curves['gold']):+.3f} "
             "(last third of iterations against the first)")  # fmt: skip
    if proxy > 0 and gold < 0:
        return f"{moved}: the reward model's score rose while the gold judge's fell: reward hacking."
    if proxy > 0 and gold == 0:
        return f"{moved}: the reward model's score rose while the gold judge's did not: over-optimisation."
    if proxy > 0:
        return f"{moved}: both rose; no over-optimisation visible in this many iterations."
    fell = ", and the gold fell" if gold < 0 else ""
    return (
        f"{moved}: the proxy did not clearly rise{fell} (changes within two standard errors count as none)."
    )


def proxy_gold_section(
    runs: dict[str, str | Path], gold_name: str = "gold judge", evals: dict[str, dict] | None = None
) -> str:
    """An HTML section (inline SVG, no scripts) plotting proxy and gold score per PPO iteration for
    each run, with the numbers in a table below: what `preftune demo --ppo` adds to its report.
    `evals` (label -> eval.json of a `run_eval` with a gold judge) adds their held-out win rates."""
    import html

    curves = {label: ppo_curves(run_dir) for label, run_dir in runs.items()}
    colors = dict(zip(curves, _COLORS, strict=False))
    charts = [
        _svg_chart(
            "proxy: reward-model score", {k: (c["step"], c["proxy"]) for k, c in curves.items()}, colors
        ),
        _svg_chart(f"gold: {gold_name}", {k: (c["step"], c["gold"]) for k, c in curves.items()}, colors),
        _svg_chart("KL(policy || base), nats", {k: (c["step"], c["kl"]) for k, c in curves.items()}, colors),
    ]
    legend = " ".join(
        f"<span style='color:{colors[label]}'>&#9632;</span> {html.escape(label)}" for label in curves
    )
    parts = [
        "<section id='proxy-vs-gold'><h2>Reward hacking: proxy against gold, per PPO iteration</h2>",
        "<p>PPO maximises the reward model's score (the proxy). The gold judge scores the same rollouts "
        "and is never trained on. A proxy that keeps rising while the gold score stalls or falls is the "
        "policy exploiting the reward model; the KL penalty is what holds it back.</p>",
        f"<p>{legend}</p><div>{''.join(charts)}</div>",
        "<ul>" + "".join(f"<li>{html.escape(describe_run(k, c))}</li>" for k, c in curves.items()) + "</ul>",
        "<details><summary>The numbers per iteration (from each run's metrics.jsonl)</summary>",
        "<table><tr><th>run</th><th>iteration</th><th>proxy</th><th>gold</th><th>KL</th></tr>",
    ]
    for label, c in curves.items():
        for step, proxy, gold, kl in zip(c["step"], c["proxy"], c["gold"], c["kl"], strict=True):
            gold_text = "-" if gold is None else f"{gold:.4f}"
            parts.append(f"<tr data-run='{html.escape(label, quote=True)}'><td>{html.escape(label)}</td>"
                         f"<td>{step}</td><td>{proxy:.4f}</td><td>{gold_text}</td><td>{kl:.4f}</td></tr>")  # fmt: skip
    parts.append("</table></details>")
    if evals:
        parts.append(_held_out_table(evals))
    parts.append("</section>")
    return "\n".join(parts)


def reward_model_section(summary: dict, labels: str = "the kid judge") -> str:
    """An HTML section with the reward model's accuracy on its held-out pairs beside the one-rule
    baselines' on the same pairs (`preftune demo`'s eval.json `reward_model`), for `labels`: who
    ranked the pairs. A reward model below a rule has not learned what that rule reads."""
    import html

    rows = [("reward model", summary["held_out_accuracy"])] + list(summary["rule_baselines"].items())
    parts = [
        "<section id='reward-model'><h2>Reward model: pairs of prompts it never saw</h2>",
        f"<p>Share of the {summary['held_out_pairs']} held-out pairs each one orders the same way as "
        f"{html.escape(labels)}: the reward model, and rules that read one feature of each answer (ties count "
        f"half). The reward model trained on "
        f"{summary['train_pairs']} pairs; PPO maximises its score.</p>",
        "<table><tr><th>ranked by</th><th>held-out accuracy</th></tr>",
    ]
    for name, accuracy in rows:
        parts.append(f"<tr data-ranker='{html.escape(name, quote=True)}'><td>{html.escape(name)}</td>"
                     f"<td>{100 * accuracy:.1f}%</td></tr>")  # fmt: skip
    parts.append("</table></section>")
    return "\n".join(parts)


def _held_out_table(evals: dict[str, dict]) -> str:
    import html

    rows = ["<h3>Final policies on the held-out prompts, against the base model</h3><table><tr><th>run</th>"
            "<th>proxy judge</th><th>proxy win rate</th><th>gold judge</th><th>gold win rate</th>"
            "<th>KL (nats)</th><th>prompts</th></tr>"]  # fmt: skip
    for label, result in evals.items():
        gold = result["gold"]
        for proxy, entry in result["judges"].items():
            if proxy == gold:
                continue
            kl = result.get("kl", {}).get("mean")
            rows.append(f"<tr data-held-out='{html.escape(label, quote=True)}'><td>{html.escape(label)}</td>"
                        f"<td>{html.escape(proxy)}</td><td>{entry['win_rate']:.3f}</td><td>{html.escape(gold)}</td>"
                        f"<td>{result['judges'][gold]['win_rate']:.3f}</td><td>{'-' if kl is None else f'{kl:.2f}'}</td>"
                        f"<td>{result.get('n_prompts', '-')}</td></tr>")  # fmt: skip
    rows.append("</table><p class='note'>One sample per prompt from each side; ties count half. A proxy win "
                "rate well above the gold one is the same over-optimisation, on prompts PPO never saw.</p>")  # fmt: skip
    return "\n".join(rows)


def _svg_chart(title: str, series: dict[str, tuple[list, list]], colors: dict[str, str]) -> str:
    """A small line chart as inline SVG: one polyline per series, y range from the data."""
    import html

    width, height, left, right, top, bottom = 300, 210, 44, 10, 24, 30
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True) if y is not None]
    if not points:
        return ""
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.1 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
           f"style='margin-right:1em' aria-label='{html.escape(title, quote=True)}'>",
           f"<text x='{left}' y='15' font-size='12' font-weight='bold'>{html.escape(title)}</text>",
           f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
           "fill='none' stroke='#bbb'/>"]  # fmt: skip
    step = _tick_step(y_hi - y_lo)
    for i in range(math.ceil(y_lo / step), math.floor(y_hi / step) + 1):
        out.append(f"<text x='{left - 4}' y='{sy(i * step) + 4:.1f}' font-size='10' text-anchor='end'>"
                   f"{_tick(i * step, step)}</text>")  # fmt: skip
    for x in sorted({p[0] for p in points}):
        out.append(f"<text x='{sx(x):.1f}' y='{height - 14}' font-size='10' text-anchor='middle'>{x}</text>")
    out.append(
        f"<text x='{(left + width - right) / 2}' y='{height - 2}' font-size='10' text-anchor='middle'>iteration</text>"
    )
    for label, (xs, ys) in series.items():
        kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in kept)
        out.append(f"<polyline fill='none' stroke='{colors[label]}' stroke-width='1.8' points='{path}'/>")
        for x, y in kept:
            out.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{colors[label]}'>"
                       f"<title>{html.escape(label)}, iteration {x}: {y:.4f}</title></circle>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)


def _tick_step(span: float) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about four ticks over `span`."""
    raw = span / 4 if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _tick(value: float, step: float) -> str:
    """`value` with as many decimals as a tick `step` needs (0.05 -> 2), and never "-0.00"."""
    power = math.floor(math.log10(step))
    quarter = abs(step / 10**power - 2.5) < 1e-9  # 0.25, 2.5, 25...: one decimal more than the power
    decimals = max(0, min(4, -power + quarter))
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def insert_section(report: str | Path, section: str) -> Path:
    """Put `section` at the end of an existing HTML report (before `</body>`), atomically."""
    path = Path(report)
    text = path.read_text(encoding="utf-8")
    at = text.rfind("</body>")
    text = text[:at] + section + "\n" + text[at:] if at >= 0 else text + section + "\n"
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path

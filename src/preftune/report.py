"""`preftune report RUN_DIR`: one self-contained HTML file describing a run.

The report holds the resolved config, every dashboard chart of the run (plotly.js inlined from the
installed `plotly` package, the data inlined as JSON), the final eval numbers, the DPO warning
when it applies, and the sample completions. It needs no server and no network: open it from disk,
attach it to an issue, archive it beside the checkpoints. Every trainer writes one at the end of a
run (`train.setup.finish_run`).

Everything shown comes from the run folder, through the same readers the dashboard uses
(`web/runs.py`); model text is escaped by the template like everywhere else.
"""

from __future__ import annotations

import json
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
        warning=runs.falling_chosen_logps(rows),
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

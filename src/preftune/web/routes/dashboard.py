"""The training dashboard (`preftune serve --runs DIR`): the runs, one live page per run, overlays.

Pages are rendered once; `dashboard_live.js` then polls `/runs/ID/data?since=N` every second and adds
the new rows of `metrics.jsonl` (and new samples) to the charts, so a page follows a run while it
trains with no reload. The server keeps nothing per client: `since` is the number of rows the page
already has. The dashboard is read-only. Served on loopback it needs no login; served on any other
address (`serve --host 0.0.0.0`) it is for the logged-in admin only, since samples and configs can
be private. Pages never show the server's folders: runs are named relative to the runs folder.

Plotly comes from the installed `plotly` package, served under `/vendor/` (no CDN).
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from preftune.runlog import read_metrics
from preftune.web import runs
from preftune.web.render import render
from preftune.web.security import require_admin

router = APIRouter()

MAX_OVERLAY = 8


def runs_root(request: Request) -> Path | None:
    return getattr(request.app.state, "runs_dir", None)


def runs_access(request: Request) -> None:
    """Dependency of every /runs route: the admin's login, when the app says runs need one."""
    if getattr(request.app.state, "runs_login", False):
        require_admin(request)


runs_router = APIRouter(prefix="/runs", dependencies=[Depends(runs_access)])


def _run_dir(request: Request, run_id: str) -> Path:
    root = runs_root(request)
    found = runs.find_run(root, run_id) if root is not None else None
    if found is None:
        raise HTTPException(404, f"no run {run_id!r} in the runs folder")
    return found


def _page(request: Request, run_ids: list[str]):
    run_dirs = [_run_dir(request, run_id) for run_id in run_ids]
    described, all_rows = [], []
    for run_id, run_dir in zip(run_ids, run_dirs, strict=True):
        rows = read_metrics(run_dir)
        all_rows += rows
        described.append({"id": run_id, "kind": runs.run_kind(runs.read_config(run_dir), rows)})
    charts = runs.charts_for([r["kind"] for r in described], all_rows)
    config = {"runs": described, "charts": [c.to_dict() for c in charts], "poll_ms": 1000}
    title = run_ids[0] if len(run_ids) == 1 else f"{len(run_ids)} runs"
    return render(
        request, "dashboard_run.html", title=title, runs=described, charts=charts, config=config,
        plotly_guards=plotly_guards(),
    )  # fmt: skip


def plotly_guards() -> tuple[str, ...]:
    """Element ids for `dashboard_plotly.html` (none when plotly is missing: /vendor says why)."""
    try:
        return runs.plotly_style_guard_ids()
    except RuntimeError:
        return ()


@runs_router.get("")
def index(request: Request):
    root = runs_root(request)
    listed = runs.list_runs(root) if root is not None else []
    for run in listed:
        run["updated_text"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["updated"]))
    # The folder's own name only: its place on the server is nobody's business.
    folder = None if root is None else root.name or str(root)
    return render(request, "dashboard_index.html", title="Runs", root=folder, runs=listed)


@runs_router.get("/compare")
def compare(request: Request, run: list[str] = Query(default_factory=list)):
    chosen = list(dict.fromkeys(run))  # keep the order, drop repeats
    if not chosen:
        raise HTTPException(400, "pick at least one run to show")
    if len(chosen) > MAX_OVERLAY:
        raise HTTPException(400, f"overlay at most {MAX_OVERLAY} runs at once")
    return _page(request, chosen)


@runs_router.get("/{run_id}")
def run_page(request: Request, run_id: str):
    return _page(request, [run_id])


@runs_router.get("/{run_id}/data")
def run_data(request: Request, run_id: str, since: int = Query(0, ge=0), samples_since: int = Query(0, ge=0)):
    """New metric rows and samples after the first `since` / `samples_since`, and the run's
    reward-hacking warnings (all of them, each time: those of `preftune.eval.hacking.check_run`).

    If the file now has fewer rows than the page holds (a resumed run truncates what was logged
    after its checkpoint), `reset` is true and every row is sent again.
    """
    run_dir = _run_dir(request, run_id)
    rows = read_metrics(run_dir)
    samples = runs.read_samples(run_dir)
    reset = since > len(rows) or samples_since > len(samples)
    if reset:
        since = samples_since = 0
    return {
        "rows": rows[since:],
        "total": len(rows),
        "samples": samples[samples_since:],
        "samples_total": len(samples),
        "reset": reset,
        "warnings": runs.run_warnings(run_dir, rows, samples),
        "finished": (run_dir / "summary.json").exists(),
    }


# ---- vendored assets, from installed packages -------------------------------------------------

_plotly_css_text: str | None = None


@router.get("/vendor/plotly.min.js")
def plotly_js():
    try:
        path = runs.plotly_js_path()
    except RuntimeError as err:
        raise HTTPException(500, str(err)) from None
    return FileResponse(
        path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/vendor/plotly.css")
async def plotly_css():
    global _plotly_css_text
    if _plotly_css_text is None:
        try:
            _plotly_css_text = await run_in_threadpool(runs.plotly_css)
        except RuntimeError as err:
            raise HTTPException(500, str(err)) from None
    return Response(
        _plotly_css_text, media_type="text/css", headers={"Cache-Control": "public, max-age=86400"}
    )

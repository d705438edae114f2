"""The labeling app and AI feedback: `preftune serve`, `admin-link`, `export`, `judge`."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import app, fail, user_errors


@app.command("serve")
@user_errors
def serve(
    db: str = typer.Option("sqlite:///preftune.db", "--db", help="Database URL: sqlite:///FILE (default) or postgresql://..."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback prints a warning."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    runs: Path = typer.Option(None, "--runs", help="Folder of run folders: the dashboard at /runs follows them live."),
    base_url: str = typer.Option(None, "--base-url", help="Address people open (login links use it; other Host names are refused). Default: the bound address."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Server processes (PostgreSQL scales with them; SQLite has one writer)."),
) -> None:
    """Run the labeling app, the training dashboard (/runs) and the playground (/playground)."""
    from ..web.app import serve as run_server

    _check_port_free(host, port)
    try:
        run_server(db=db, host=host, port=port, runs=runs, base_url=base_url, workers=workers)
    except (ValueError, RuntimeError) as err:
        fail(str(err))


@app.command("admin-link")
@user_errors
def admin_link(
    db: str = typer.Option(..., "--db", help="Database URL the labeling app uses (as for `preftune serve --db`)."),
    base_url: str = typer.Option("http://127.0.0.1:8000", "--base-url", help="Address the server is reached at."),
) -> None:
    """Print a new admin login link; the old one (and the sessions it opened) stop working."""
    from ..web.app import admin_link as new_admin_link

    try:
        typer.echo(new_admin_link(db, base_url))
    except (ValueError, RuntimeError) as err:
        fail(str(err))


def _check_port_free(host: str, port: int) -> None:
    """A busy port is one line and exit 2 here, before uvicorn logs a traceback-like error."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            fail(f"--port {port}: cannot listen on {host}:{port}: {err.strerror or err} (another server there? pick another --port)")


@app.command("export")
@user_errors
def export(
    db: str = typer.Option(..., "--db", help="Database URL the labeling app used."),
    project: str = typer.Option(..., "--project", help="Project name (or id)."),
    out: Path = typer.Option(..., "-o", "--out", help="Canonical pairs JSONL to write (read by `preftune dpo` and `rm`)."),
    min_votes: int = typer.Option(1, "--min-votes", min=1, help="Keep items with at least this many counted votes."),
    drop: str = typer.Option("ties,both_bad", "--drop", help="Outcomes to leave out: ties, both_bad (comma-separated)."),
    datasets_dir: Path = typer.Option(None, "--datasets-dir", help="Also write a `datasets` folder here."),
    unpaired: bool = typer.Option(False, "--unpaired", help='Write unpaired rows {"prompt", "completion", "label"} (KTO\'s format): winner true, loser false. A thumbs project always exports them.'),
) -> None:
    """Aggregate votes by majority into preference pairs (strength becomes `margin`), or a thumbs
    project's votes into unpaired rows for `preftune kto`."""
    from ..web.export import export_project

    try:
        report = export_project(db, project, out, min_votes=min_votes, drop=drop, datasets_dir=datasets_dir,
                                unpaired=unpaired)  # fmt: skip
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    typer.echo(report.summary())


@app.command("judge")
@user_errors
def judge(
    judge_name: str = typer.Option(..., "--judge", help="sentiment, readability, or rm:DIR (a trained reward model)."),
    candidates: Path = typer.Option(..., "--candidates", help="`preftune generate` output (2+ completions per prompt) or pairs."),
    out: Path = typer.Option(..., "-o", "--out", help="Pairs JSONL to write, labelled by the judge."),
) -> None:
    """Label candidate answers with a judge or reward model (AI feedback) and write pairs."""
    from ..judges import judge_file

    try:
        report = judge_file(judge_name, candidates, out)
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    typer.echo(report.summary())

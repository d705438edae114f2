"""The web app: `create_app` wires the store, the routers and the security layer; `serve` runs it.

Pages are plain function views in `routes/`, one module per area. To add an area (the dashboard,
the playground), write `routes/NAME.py` with an `APIRouter` and include it in `ROUTERS`. Every
route inherits the CSRF check and the security headers; add `Depends(require_admin)` or your own
dependency for access control.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from preftune.web.db import DEFAULT_DB
from preftune.web.render import STATIC_DIR, render, wants_json
from preftune.web.routes import admin, admin_items, annotate, auth, dashboard, playground
from preftune.web.routes.annotate_hot import HotAnnotate
from preftune.web.security import SecurityLayer, csrf_protect, log_config, refuse_out_of_range
from preftune.web.store import NotFound, Store, StoreError
from preftune.web.votes import AlreadyVoted, NotAssigned

# The annotate router first: FastAPI tries the routers in this order on every request, and the
# annotators' two requests per vote are nearly all the traffic (no paths overlap between them).
ROUTERS = [
    annotate.router, auth.router, admin.router, admin_items.router, dashboard.runs_router, dashboard.router,
    playground.router,
]  # fmt: skip

_STATUS_BY_ERROR = [(NotAssigned, 403), (AlreadyVoted, 409), (NotFound, 404), (StoreError, 400)]


DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def create_app(
    db: str | Store = DEFAULT_DB,
    runs: str | Path | None = None,
    base_url: str = DEFAULT_BASE_URL,
    runs_login: bool = False,
    fail_interrupted_jobs: bool = True,
) -> FastAPI:
    """The app over the database at `db` (a URL or an open Store); creates or migrates the schema.

    `runs` is the folder of run folders the dashboard (`/runs`) shows; None shows none. With
    `runs_login`, only the logged-in admin sees it (`serve` sets it off loopback).
    `base_url` is the address people open (`http://HOST:PORT` or behind a proxy
    `https://NAME`): login links are built from it, never from the request's Host header, and
    requests for any other host name are refused (see `security.SecurityLayer`).
    """
    base_url = check_base_url(base_url)
    store = db if isinstance(db, Store) else Store(db)
    if fail_interrupted_jobs:
        store.fail_interrupted_jobs()
    app = FastAPI(
        title="preftune",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # CSRF is checked for every route, including routers added later (see security.py).
        dependencies=[Depends(csrf_protect), Depends(refuse_out_of_range)],
    )
    app.state.store = store
    app.state.runs_dir = Path(runs) if runs is not None else None
    app.state.runs_login = runs_login
    app.state.base_url = base_url
    app.add_middleware(SecurityLayer, allowed={urlsplit(base_url).hostname or ""})
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in ROUTERS:
        app.include_router(router)
    # Before every other route: the common case of the annotators' two requests per vote on plain
    # Starlette; anything else it leaves to the routes above (see routes/annotate_hot.py).
    app.router.routes.insert(0, HotAnnotate(store))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return await _error_response(
            request, error.status_code, str(error.detail), getattr(error, "headers", None)
        )

    @app.exception_handler(StoreError)
    async def store_error(request: Request, error: StoreError):
        status = next(code for kind, code in _STATUS_BY_ERROR if isinstance(error, kind))
        return await _error_response(request, status, str(error))

    return app


async def _error_response(request: Request, status: int, detail: str, headers=None):
    if (
        wants_json(request)
        or request.method != "GET"
        and "text/html" not in request.headers.get("accept", "")
    ):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    heading = {401: "Please log in", 403: "Not allowed", 404: "Not found", 409: "Already done"}.get(
        status, "Error"
    )
    link, link_text = way_on(request.url.path)
    return await run_in_threadpool(
        render, request, "message.html", status, title=heading, heading=heading, message=detail,
        link=link, link_text=link_text,
    )  # fmt: skip


_PROJECT_PATH = re.compile(r"^/admin/projects/(\d{1,10})(/|$)")


def way_on(path: str) -> tuple[str, str]:
    """Where an error page sends people next: the page they came from, as near as the path tells."""
    project = _PROJECT_PATH.match(path)
    if project and path.rstrip("/") != project.group(0).rstrip("/"):
        return f"/admin/projects/{project.group(1)}", "Back to the project"
    if path.startswith("/annotate/"):
        return "/annotate", "Back to your queue"
    if path.startswith("/runs/"):
        return "/runs", "Back to the runs"
    if path.startswith("/admin/"):
        return "/admin", "Back to the projects"
    return "/", "Go to the start page"


def check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(
            f"--base-url {base_url}: give the address people open, like http://127.0.0.1:8000 "
            "or https://label.example.org (no path)"
        )
    return base_url.rstrip("/")


def default_base_url(host: str, port: int) -> str:
    """The address the server is bound to, as a URL (a wildcard bind shows as 127.0.0.1)."""
    link_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{link_host}]' if ':' in link_host else link_host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_lines(store: Store, host: str, port: int, base_url: str | None = None) -> list[str]:
    """What `serve` prints before starting: the bind warning and, on first start, the admin link."""
    lines = []
    if not is_loopback(host):
        lines.append(
            f"WARNING: binding to {host} makes the labeling server reachable from other machines. "
            "Anyone with a login link can use it; put it behind HTTPS (a reverse proxy) before sharing links."
            + ("" if base_url else " Give --base-url, the address people open, so that invite links use it.")
        )
    base = check_base_url(base_url) if base_url else default_base_url(host, port)
    if not store.has_admin():
        token = store.new_admin_token()
        lines.append(f"Admin login (shown once, keep it secret): {base}/login/{token}")
    else:
        lines.append(
            f"Serving {store.url} at {base}/ (admin link was printed at first start; "
            "`preftune admin-link` makes a new one)"
        )
    return lines


def admin_link(db: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """`preftune admin-link`: a new admin login link for a lost one. The old link stops working
    and the sessions it opened end, so a leaked link is shut out too."""
    base_url = check_base_url(base_url)
    store = Store(db)
    try:
        return f"{base_url}/login/{store.new_admin_token()}"
    finally:
        store.close()


def serve(
    db: str = DEFAULT_DB,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    runs: str | Path | None = None,
    base_url: str | None = None,
    workers: int = 1,
    access_log: bool = True,
) -> None:
    """`preftune serve`: create or open the database, print the startup lines, run uvicorn.

    With `runs`, the dashboard at /runs shows the run folders under it, live while they train.
    `base_url` (default: the bound address) is what login links start with. `workers` > 1 runs
    that many processes (`asgi.py`); on SQLite they share its one writer, PostgreSQL scales further.
    `access_log=False`: no line per request (a benchmark's log stays small; startup lines remain).
    """
    import uvicorn

    if runs is not None and not Path(runs).is_dir():
        raise ValueError(f"--runs {runs}: not a folder (give the folder that holds your run folders)")
    base = check_base_url(base_url) if base_url else default_base_url(host, port)
    store = Store(db)
    for line in startup_lines(store, host, port, base_url):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout, flush=True)
    if runs is not None:
        who = "" if is_loopback(host) else " (admin login required: the server is not on loopback)"
        print(f"Dashboard of the runs in {runs}: {base}/runs{who}", flush=True)
    # log_config: uvicorn's own, plus the filter that keeps login secrets out of the access log.
    options = dict(host=host, port=port, log_level=log_level, log_config=log_config(), access_log=access_log)
    if workers <= 1:
        uvicorn.run(create_app(store, runs=runs, base_url=base, runs_login=not is_loopback(host)), **options)
        return
    store.fail_interrupted_jobs()  # once, here: see asgi.py
    store.close()
    os.environ.update(worker_environment(db, base, runs, runs_login=not is_loopback(host)))
    uvicorn.run("preftune.web.asgi:app", workers=workers, **options)


def worker_environment(db: str, base_url: str, runs: str | Path | None, runs_login: bool) -> dict[str, str]:
    """The settings a worker process reads back in `app_from_environment`."""
    return {"PREFTUNE_DB": db, "PREFTUNE_BASE_URL": base_url, "PREFTUNE_RUNS": str(runs or ""),
            "PREFTUNE_RUNS_LOGIN": "1" if runs_login else "0"}  # fmt: skip


def app_from_environment(env: dict[str, str] | None = None) -> FastAPI:
    """A worker's app from `worker_environment` (set by `serve`, or by hand for another ASGI server).
    Runs need the admin login unless PREFTUNE_RUNS_LOGIN=0: the safe side for a server started by hand."""
    env = os.environ if env is None else env
    return create_app(
        env.get("PREFTUNE_DB", DEFAULT_DB),
        runs=env.get("PREFTUNE_RUNS") or None,
        base_url=env.get("PREFTUNE_BASE_URL", DEFAULT_BASE_URL),
        runs_login=env.get("PREFTUNE_RUNS_LOGIN", "1") != "0",
        fail_interrupted_jobs=False,
    )

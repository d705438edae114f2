"""The web app: `create_app` wires the store, the routers and the security layer; `serve` runs it.

Pages are plain function views in `routes/`, one module per area. To add an area (the dashboard,
the playground), write `routes/NAME.py` with an `APIRouter` and include it in `ROUTERS`. Every
route inherits the CSRF check and the security headers; add `Depends(require_admin)` or your own
dependency for access control.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from preftune.web.db import DEFAULT_DB
from preftune.web.render import STATIC_DIR, render, wants_json
from preftune.web.routes import admin, admin_items, annotate, auth, dashboard, playground
from preftune.web.security import SecurityHeaders, csrf_protect, log_config, refuse_out_of_range
from preftune.web.store import NotFound, Store, StoreError
from preftune.web.votes import AlreadyVoted, NotAssigned

ROUTERS = [auth.router, admin.router, admin_items.router, annotate.router, dashboard.router, playground.router]

_STATUS_BY_ERROR = [(NotAssigned, 403), (AlreadyVoted, 409), (NotFound, 404), (StoreError, 400)]


def create_app(db: str | Store = DEFAULT_DB, runs: str | Path | None = None) -> FastAPI:
    """The app over the database at `db` (a URL or an open Store); creates or migrates the schema.

    `runs` is the folder of run folders the dashboard (`/runs`) shows; None shows none.
    """
    store = db if isinstance(db, Store) else Store(db)
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
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in ROUTERS:
        app.include_router(router)

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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_lines(store: Store, host: str, port: int) -> list[str]:
    """What `serve` prints before starting: the bind warning and, on first start, the admin link."""
    lines = []
    if not is_loopback(host):
        lines.append(
            f"WARNING: binding to {host} makes the labeling server reachable from other machines. "
            "Anyone with a login link can use it; put it behind HTTPS (a reverse proxy) before sharing links."
        )
    link_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in link_host:
        link_host = f"[{link_host}]"
    if not store.has_admin():
        token = store.new_admin_token()
        lines.append(f"Admin login (shown once, keep it secret): http://{link_host}:{port}/login/{token}")
    else:
        lines.append(
            f"Serving {store.url} at http://{link_host}:{port}/ (admin link was printed at first start)"
        )
    return lines


def admin_link(db: str, base_url: str = "http://127.0.0.1:8000") -> str:
    """`preftune admin-link`: a new admin login link for a lost one. The old link stops working
    and the sessions it opened end, so a leaked link is shut out too."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"--base-url {base_url}: give the address people open, like http://127.0.0.1:8000")
    store = Store(db)
    try:
        return f"{base_url.rstrip('/')}/login/{store.new_admin_token()}"
    finally:
        store.close()


def serve(
    db: str = DEFAULT_DB, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", runs: str | Path | None = None
) -> None:
    """`preftune serve`: create or open the database, print the startup lines, run uvicorn.

    With `runs`, the dashboard at /runs shows the run folders under it, live while they train.
    """
    import uvicorn

    if runs is not None and not Path(runs).is_dir():
        raise ValueError(f"--runs {runs}: not a folder (give the folder that holds your run folders)")
    store = Store(db)
    for line in startup_lines(store, host, port):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout, flush=True)
    if runs is not None:
        link_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        link_host = f"[{link_host}]" if ":" in link_host else link_host
        print(f"Dashboard of the runs in {runs}: http://{link_host}:{port}/runs", flush=True)
    # log_config: uvicorn's own, plus the filter that keeps login secrets out of the access log.
    uvicorn.run(create_app(store, runs=runs), host=host, port=port, log_level=log_level, log_config=log_config())

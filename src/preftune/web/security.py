"""Who is asking, and may they: sessions, CSRF, roles and security headers.

- Login is by secret link (`/login/TOKEN`); the server keeps only the token's hash and its logs
  show `/login/[redacted]` (`log_config`). A link may expire, an admin can revoke it. Visiting the
  link opens a server-side session whose id travels in an HttpOnly, SameSite=Lax cookie (Secure
  when served over HTTPS), so page scripts cannot read it and other sites cannot send it on POSTs.
- Every state-changing request (any method but GET/HEAD/OPTIONS, on any route, including routes
  added later) must carry the session's CSRF token, as the form field `csrf_token` or the
  `X-CSRF-Token` header. This is checked by an app-wide dependency, not route by route.
- Roles: admin pages refuse annotators (403); annotator pages refuse admins. Item-level checks
  (only your own assignments) live in `votes.open_item` and `votes.record_vote`.
- Sessions are cached per worker process for `store.SESSION_CACHE_SECONDS` (5 s) on page views
  (GET, HEAD): the session row is then not read on every page. Logout, revoking a link and
  removing a person clear the entry in this process at once; another worker serves a page from
  its cache for at most those seconds more. State-changing requests always see the database:
  they read the session afresh, or (the vote, `checks_session_itself`) re-check it inside the
  transaction that stores the vote.
- Every response carries a Content-Security-Policy that allows only this server's own scripts,
  styles and images: no inline script, so an escaped payload could not run even if it slipped out.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from preftune.web.store import MAX_ID, SESSION_SECONDS, Store, hash_token

COOKIE = "preftune_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Login links carry their secret in the path: never leak it to another site.
    (b"referrer-policy", b"no-referrer"),
]

_UNLOADED = object()


def get_store(request: Request) -> Store:
    return request.app.state.store


def login_base(request: Request) -> str:
    """Scheme, host and port that login links start with (see `create_app`'s `base_url`)."""
    return request.app.state.base_url


def current_session(request: Request) -> dict[str, Any] | None:
    """The caller's session joined with their user, or None; looked up once per request.

    Page views may be served from the per-worker cache; state-changing requests read the database,
    unless their route re-checks the session itself (`checks_session_itself`).
    """
    cached = getattr(request.state, "session", _UNLOADED)
    if cached is not _UNLOADED:
        return cached
    token = request.cookies.get(COOKIE)
    session = None
    if token:
        store = get_store(request)
        session = store.cached_session(token) if _may_use_cache(request) else store.session(token)
    request.state.session = session
    return session


async def session_of(request: Request) -> dict[str, Any] | None:
    """`current_session` from async code: a worker thread only when the database must be read."""
    cached = getattr(request.state, "session", _UNLOADED)
    if cached is not _UNLOADED:
        return cached
    token = request.cookies.get(COOKIE)
    if not token:
        request.state.session = None
        return None
    if _may_use_cache(request):
        hit = get_store(request).session_from_cache(token)
        if hit is not None:
            request.state.session = hit
            return hit
    return await run_in_threadpool(current_session, request)


def checks_session_itself(endpoint: Any) -> Any:
    """Mark a state-changing route that re-checks the session in its own transaction (passing
    `session_token_hash(request)` to the store): its CSRF check may use the cached session."""
    endpoint.checks_session_itself = True
    return endpoint


def _may_use_cache(request: Request) -> bool:
    endpoint = request.scope.get("endpoint")
    return request.method in SAFE_METHODS or getattr(endpoint, "checks_session_itself", False)


def session_token_hash(request: Request) -> str:
    return hash_token(request.cookies.get(COOKIE, ""))


def session_ended(request: Request) -> HTTPException:
    """401 for a state change whose session ended, and the session dropped from the cache.

    Most often a session that ended (expired, or logged out in another tab) under an open page.
    Without a session there is nothing to forge, so this is a login question, not a CSRF alarm.
    """
    token = request.cookies.get(COOKIE)
    if token:
        get_store(request).forget_session(token)
    kept = (
        " Your vote is kept in this browser and filled in again when you are back."
        if request.url.path.startswith("/annotate/items/")
        else ""
    )
    return HTTPException(401, f"Your session has ended: open your login link again.{kept}")


async def csrf_protect(request: Request) -> None:
    """App-wide dependency: refuse a state-changing request without this session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    session = await session_of(request)
    if session is None:
        raise session_ended(request)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            sent = (await request.form()).get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session["csrf"].encode()):
        raise HTTPException(403, "CSRF check failed: missing or wrong token; reload the page")


async def refuse_out_of_range(request: Request) -> None:
    """App-wide dependency: ids past what the database holds are 404, NUL anywhere is 400.

    An id past the integer column's range makes the driver overflow (a 500) rather than find
    nothing; PostgreSQL cannot store NUL in text at all. Checking here covers every route at once.
    """
    for name, value in request.path_params.items():
        if name.endswith("_id") and value.isascii() and value.isdigit() and int(value) > MAX_ID:
            raise HTTPException(404, f"no {name.removesuffix('_id')} with id {value}")
    for name, value in request.query_params.multi_items():
        if "\x00" in value or "\x00" in name:
            raise HTTPException(400, f"{name}: contains a NUL character, which cannot be stored")
    if request.method not in SAFE_METHODS and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        for name, value in (await request.form()).multi_items():
            if isinstance(value, str) and ("\x00" in value or "\x00" in name):
                raise HTTPException(400, f"{name}: contains a NUL character, which cannot be stored")


def require_admin(request: Request) -> dict[str, Any]:
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "not logged in: open your admin login link")
    if session["role"] != "admin":
        raise HTTPException(403, "this page is for the project admin")
    return session


async def require_annotator(request: Request) -> dict[str, Any]:
    # async, so that a cached session costs no hop to a worker thread (the annotate hot path).
    session = await session_of(request)
    if session is None:
        raise HTTPException(401, "not logged in: open the login link you were sent")
    if session["role"] != "annotator":
        raise HTTPException(403, "this page is for annotators")
    return session


def set_session_cookie(response: Any, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


# Pages and downloads hold secrets (invite links, CSRF tokens, exported labels): never kept by a
# browser's or a proxy's cache. Static assets hold none and may be cached.
NO_STORE = (b"cache-control", b"no-store")
CACHEABLE_PREFIXES = ("/static/", "/vendor/", "/favicon.ico")
_PAGE_HEADERS = [*SECURITY_HEADERS, NO_STORE]


_LOGIN_PATH = re.compile(r"/login/[^\s?#\"]+")


def redact_login_tokens(text: str) -> str:
    return _LOGIN_PATH.sub("/login/[redacted]", text)


class RedactLoginTokens(logging.Filter):
    """Logging filter: a login link's secret never reaches a log (uvicorn logs every request path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_login_tokens(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_login_tokens(record.msg)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with `RedactLoginTokens` on its access and error loggers."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_login_tokens"] = {"()": RedactLoginTokens}
    for name in ("uvicorn.access", "uvicorn.error"):
        config["loggers"].setdefault(name, {})["filters"] = ["redact_login_tokens"]
    return config


def host_name(host_header: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SecurityLayer:
    """ASGI middleware with two jobs, in one layer because every layer costs every request a call:

    - Refuse requests whose Host is not one this server answers to (400). Accepted: the configured
      base URL's host, `localhost`, and IP literals. That closes DNS rebinding (a page on another
      site re-pointing its own name at this server: the browser then sends that name as Host)
      while people can still reach a server bound to 0.0.0.0 by its address.
    - Add `SECURITY_HEADERS` (and `NO_STORE` off static paths) to every response.
    """

    def __init__(self, app: Any, allowed: set[str]):
        self.app = app
        self.allowed = {name.lower() for name in allowed} | {"localhost"}
        self._known_hosts: set[str] = set()  # Host headers already allowed: most requests repeat one

    def allows(self, host_header: str) -> bool:
        host = host_name(host_header)
        return host in self.allowed or _is_ip(host)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = b""
        for name, value in scope.get("headers") or []:
            if name == b"host":
                host = value  # the last one, as a dict of the headers would keep
        host = host.decode("latin-1")
        if host not in self._known_hosts:
            if not self.allows(host):
                await self._refuse(scope, send, host)
                return
            if len(self._known_hosts) < 100:
                self._known_hosts.add(host)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers_to_add = SECURITY_HEADERS if scope["path"].startswith(CACHEABLE_PREFIXES) else _PAGE_HEADERS

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name for name, _ in headers}
                message["headers"] = headers + [(k, v) for k, v in headers_to_add if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope: dict, send: Any, host: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = (
            f"unknown host {host!r}: this server answers to {', '.join(sorted(self.allowed))} "
            "(start it with --base-url to name the address people use)"
        ).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), *SECURITY_HEADERS]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

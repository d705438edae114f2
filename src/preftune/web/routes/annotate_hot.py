"""The annotators' two requests per vote, on a plain Starlette route in front of FastAPI's.

`bench/labeling_load.py` (issue 18) asks ~400 votes/s of two cores, and FastAPI's per-request work
(dependency solving, form parsing through python-multipart, parameter validation) is most of what a
vote costs in Python. This route takes only the common case of each request:

- `GET /annotate` asking for JSON (`Accept: application/json`), no query string;
- `POST /annotate/items/ID/vote` asking for JSON, urlencoded, with the CSRF token in its header;

both from a session this worker has cached (`Store.session_from_cache`), of an annotator, and (the
vote) with the right CSRF token. Everything else, `matches` turns down and the router goes on to the
FastAPI routes in `annotate.py`: HTML pages, missing or uncached sessions, wrong tokens, other
content types, ids past `MAX_ID` (404 there, `refuse_out_of_range`). A vote this route took but
whose form is anything but plain, or that the store refuses (a 4xx of any kind), is replayed, body
and all, through those routes: their answer is the answer, so error bodies and status codes are
theirs by construction. A refused vote stored nothing (its transaction rolled back), so the replay
is safe.

What it reuses rather than repeats: the session cache and the CSRF comparison of `security.py`, the
queue of `votes.open_item`, the vote of `annotate.store_vote`, the JSON of `annotate.item_json` and
`annotate.vote_json`. The Host check and the security headers come from `security.SecurityLayer`,
middleware that wraps the router and so this route too.
"""

from __future__ import annotations

import hmac
import re
from typing import Any
from urllib.parse import unquote_plus

from fastapi import HTTPException
from starlette._utils import get_route_path
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request, cookie_parser
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match, NoMatchFound

from preftune.web import votes
from preftune.web.routes.annotate import item_json, store_vote, vote_json
from preftune.web.security import COOKIE, CSRF_HEADER
from preftune.web.store import MAX_ID, Store, StoreError

_VOTE_PATH = re.compile(r"/annotate/items/([0-9]{1,10})/vote")
_FORM = "application/x-www-form-urlencoded"
_FORM_FIELDS = frozenset({"vote_id", "choice", "strength", "rationale", "csrf_token"})
MAX_BODY = 64 * 1024  # a vote's form is ~100 bytes; a long rationale goes the FastAPI way
_CSRF_HEADER = CSRF_HEADER.encode()
_SKIP = "preftune.hot_skip"  # set on a replayed request's scope: this route then never matches


class HotAnnotate(BaseRoute):
    """The route; `create_app` puts it first in the router (see the module docstring)."""

    def __init__(self, store: Store):
        self.store = store

    def matches(self, scope: dict[str, Any]) -> tuple[Match, dict[str, Any]]:
        if scope["type"] != "http" or _SKIP in scope:
            return Match.NONE, {}
        method, path = scope["method"], get_route_path(scope)
        if method == "GET":
            if path != "/annotate" or scope.get("query_string"):
                return Match.NONE, {}
            item_id = None
        elif method == "POST":
            found = _VOTE_PATH.fullmatch(path)
            if found is None or int(found.group(1)) > MAX_ID:
                return Match.NONE, {}
            item_id = int(found.group(1))
        else:
            return Match.NONE, {}
        # The first of each header, as Starlette's `Headers.get` reads them.
        accept = content_type = cookie = csrf = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = accept if accept is not None else value
            elif name == b"content-type":
                content_type = content_type if content_type is not None else value
            elif name == b"cookie":
                cookie = cookie if cookie is not None else value
            elif name == _CSRF_HEADER:
                csrf = csrf if csrf is not None else value
        if accept is None or b"application/json" not in accept or cookie is None:
            return Match.NONE, {}
        token = cookie_parser(cookie.decode("latin-1")).get(COOKIE)
        session = self.store.session_from_cache(token) if token else None
        if session is None or session["role"] != "annotator":
            return Match.NONE, {}
        if method == "POST":
            # `security.csrf_protect`'s comparison, on the header it reads first.
            if content_type is None or content_type.decode("latin-1").split(";", 1)[0].strip() != _FORM:
                return Match.NONE, {}
            sent = None if csrf is None else csrf.decode("latin-1")
            if sent is None or not hmac.compare_digest(sent.encode(), session["csrf"].encode()):
                return Match.NONE, {}
        return Match.FULL, {"preftune.hot": (session, item_id)}

    def url_path_for(self, name: str, /, **path_params: Any):
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        session, item_id = scope["preftune.hot"]
        if scope["method"] == "GET":
            assignment, counts = await run_in_threadpool(votes.open_item, self.store, session["user_id"])
            await JSONResponse(item_json(session, assignment, counts))(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        form = _plain_form(body) if complete else None
        if form is None:
            await _replay(scope, receive, send, body, complete)
            return
        request = Request(scope, receive)
        try:
            recorded, created = await run_in_threadpool(
                store_vote, request, session, item_id, form["vote_id"], form["choice"],
                form.get("strength", ""), form.get("rationale", ""),
            )  # fmt: skip
        except (HTTPException, StoreError):
            await _replay(scope, receive, send, body, True)
            return
        await JSONResponse(vote_json(recorded, created))(scope, receive, send)


async def _read_body(receive: Any) -> tuple[bytes, bool]:
    """(the body read, whether that is all of it): reading stops past MAX_BODY or at a disconnect."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False  # the replay's receive() then sees the disconnect too
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > MAX_BODY:
            return b"".join(chunks), False


def _plain_form(body: bytes) -> dict[str, str] | None:
    """The vote's form when it is plain (ASCII, `&`-separated, known fields once each, no NUL, a
    vote id and a choice), decoded as Starlette's FormParser would; None for anything else."""
    if not body.isascii() or b";" in body:
        return None
    form: dict[str, str] = {}
    for piece in body.decode("ascii").split("&"):
        name, equals, value = piece.partition("=")
        name, value = unquote_plus(name), unquote_plus(value)
        if not equals or name not in _FORM_FIELDS or name in form or "\x00" in value:
            return None
        form[name] = value
    return form if form.get("vote_id") and form.get("choice") else None


async def _replay(scope: dict[str, Any], receive: Any, send: Any, body: bytes, complete: bool) -> None:
    """Hand the request to the router's other routes: first the body already read, then the rest."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    retry = {key: value for key, value in scope.items() if key not in ("preftune.hot", "route")}
    retry[_SKIP] = True
    await scope["router"](retry, replayed, send)

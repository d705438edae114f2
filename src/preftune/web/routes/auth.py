"""Login by secret link, logout, and the home page that sends each role where it belongs."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse

from preftune.web.render import STATIC_DIR, render
from preftune.web.security import COOKIE, current_session, get_store, set_session_cookie

router = APIRouter()

HOME_BY_ROLE = {"admin": "/admin", "annotator": "/annotate"}


@router.get("/")
def home(request: Request):
    session = current_session(request)
    if session is not None and session["role"] in HOME_BY_ROLE:
        return RedirectResponse(HOME_BY_ROLE[session["role"]], status_code=303)
    message = "Open the login link you were given to start."
    return render(request, "message.html", title="Welcome", heading="preftune labeling", message=message)


def _user_for_link(request: Request, token: str):
    """(user, None) for a usable login token, or (None, the page that says why not)."""
    user = get_store(request).user_by_token(token)
    if user is None or user["role"] not in HOME_BY_ROLE:
        message = (
            "This login link is not valid (it may have been replaced or revoked). "
            "Ask the project admin for a new one."
        )
        return None, render(request, "message.html", 403, title="Login", heading="Login failed", message=message)
    if user["expired"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(user["token_expires_at"]))
        message = f"This login link expired on {when}. Ask the project admin for a new one."
        return None, render(request, "message.html", 403, title="Login", heading="Link expired", message=message)
    return user, None


@router.get("/favicon.ico", include_in_schema=False)
def favicon():
    """Browsers ask for it on every first visit; answering spares a 404 in each log."""
    return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon",
                        headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip


@router.get("/login/{token}")
def login(request: Request, token: str):
    """Open a session from a login link. Someone already logged in is asked first: otherwise a page
    on another site could send them to its own link and have them vote into its account."""
    user, refusal = _user_for_link(request, token)
    if refusal is not None:
        return refusal
    session = current_session(request)
    if session is not None and session["user_id"] == user["id"]:
        return RedirectResponse(HOME_BY_ROLE[user["role"]], status_code=303)
    if session is not None:
        return render(
            request, "switch_login.html", title="Switch account", current=session, new=user,
            action=f"/login/{token}",
        )  # fmt: skip
    return _log_in(request, user)


@router.post("/login/{token}")
def confirm_login(request: Request, token: str):
    """The "switch account" confirmation (its CSRF token proves it came from this site's page)."""
    user, refusal = _user_for_link(request, token)
    if refusal is not None:
        return refusal
    return _log_in(request, user)


def _log_in(request: Request, user: dict):
    store = get_store(request)
    old = request.cookies.get(COOKIE)
    if old:
        store.end_session(old)
    session_token, _csrf = store.create_session(user["id"])
    # 303 to a clean URL: the secret leaves the address bar and the history entry.
    response = RedirectResponse(HOME_BY_ROLE[user["role"]], status_code=303)
    set_session_cookie(response, request, session_token)
    return response


@router.post("/logout")
def logout(request: Request):
    token = request.cookies.get(COOKIE)
    if token:
        get_store(request).end_session(token)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response

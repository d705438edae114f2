"""Admin pages: projects and their settings, people, assignment and background jobs.

Items (imports, gold), quality and export are in `admin_items.py`. Every route here sits behind
`require_admin`, declared once on the router.
"""

from __future__ import annotations

import math
import time

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse

from preftune.web import jobs
from preftune.web.assign import assign_items
from preftune.web.render import render
from preftune.web.security import get_store, login_base, require_admin
from preftune.web.store import StoreError, isolate
from preftune.web.uploads import LIMITS_TEXT
from preftune.web.votes import queue_counts

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

# What the invite form proposes; an admin can change it per invitation (0: never expires).
DEFAULT_LINK_DAYS = 30


def known_judges() -> list[str]:
    from preftune.judges import known_judges as names

    return names(include_python=False)  # python: rewards are refused here (jobs.judge_work)


def back(project_id: int, notice: str) -> RedirectResponse:
    """Redirect to the project page with a one-line notice (rendered escaped)."""
    from urllib.parse import quote

    return RedirectResponse(f"/admin/projects/{project_id}?notice={quote(notice)}", status_code=303)


@router.get("")
def index(request: Request, notice: str = ""):
    store = get_store(request)
    rows = [(p, store.item_counts(p["id"])) for p in store.projects()]
    return render(request, "admin_index.html", title="Projects", rows=rows, notice=notice)


@router.post("/projects")
def create_project(
    request: Request,
    name: str = Form(...),
    guideline: str = Form(""),
    overlap: int = Form(1),
    gold_rate: float = Form(0.0),
    kind: str = Form("pairwise"),
):
    project_id = get_store(request).create_project(name, guideline, overlap, gold_rate, kind)
    what = "answers to rate" if kind == "thumbs" else "candidate pairs"
    return back(project_id, f"project created: import prompts or {what} next")


def _pairwise_only(store, project_id: int, what: str) -> None:
    # A judge picks the better of two answers, and active selection ranks pairs: neither fits one answer.
    if store.project(project_id)["kind"] == "thumbs":
        raise StoreError(f"{what} needs a pairwise project (two answers per item); this one is thumbs")


@router.get("/projects/{project_id}")
def project_page(request: Request, project_id: int, notice: str = ""):
    store = get_store(request)
    project = store.project(project_id)
    people = []
    now = time.time()
    for user in store.users(project_id):
        counts = queue_counts(store, user["id"])
        expires = user["token_expires_at"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires)) if expires else ""
        status = ("expired on " if expires and expires <= now else "expires ") + when
        people.append({**user, **counts, "link_status": status})
    return render(
        request,
        "project.html",
        title=project["name"],
        project=project,
        counts=store.item_counts(project_id),
        people=people,
        job_list=store.jobs(project_id)[:5],
        running=jobs.running_job(store, project_id),
        judges=known_judges(),
        default_link_days=DEFAULT_LINK_DAYS,
        upload_limits=LIMITS_TEXT,
        notice=notice,
    )


@router.post("/projects/{project_id}/settings")
def update_settings(
    request: Request,
    project_id: int,
    guideline: str = Form(""),
    overlap: int = Form(...),
    gold_rate: float = Form(...),
    show_suggestions: str = Form(""),
):
    get_store(request).update_project(
        project_id, guideline=guideline, overlap=overlap, gold_rate=gold_rate,
        show_suggestions=show_suggestions == "on",
    )  # fmt: skip
    return back(project_id, "settings saved")


def _link_seconds(days: str) -> float | None:
    """The invite form's "expires after N days" (empty or 0: never) in seconds."""
    days = days.strip()
    if not days or days == "0":
        return None
    try:
        value = float(days)
    except ValueError:
        raise StoreError(f"link lifetime must be a number of days, not {days!r}") from None
    if not math.isfinite(value) or value < 0:
        raise StoreError(f"link lifetime must be a number of days, not {days!r}")
    return value * 86400


def _invitation(request: Request, project: dict, name: str, token: str, expires_in: float | None):
    link = f"{login_base(request)}/login/{token}"
    response = render(
        request, "invited.html", title="Invitation", project=project, name=name, link=link,
        expires_days=None if expires_in is None else expires_in / 86400,
    )  # fmt: skip
    return response


@router.post("/projects/{project_id}/annotators")
def invite(request: Request, project_id: int, name: str = Form(...), expires_days: str = Form("")):
    store = get_store(request)
    project = store.project(project_id)
    if name.strip().startswith("judge:"):
        raise StoreError("names starting with 'judge:' are kept for automatic judges")
    expires_in = _link_seconds(expires_days)
    _user_id, token = store.create_user(name, "annotator", project_id, expires_in=expires_in)
    return _invitation(request, project, name.strip(), token, expires_in)


def _project_member(request: Request, project_id: int, user_id: int) -> dict:
    user = get_store(request).user(user_id)
    if user["project_id"] != project_id or user["role"] != "annotator":
        raise HTTPException(404, f"no annotator with id {user_id} in this project")
    return user


@router.post("/projects/{project_id}/annotators/{user_id}/link")
def new_link(request: Request, project_id: int, user_id: int, expires_days: str = Form("")):
    """A new login link for an annotator (the old one stops working): for a lost or leaked link."""
    store = get_store(request)
    user = _project_member(request, project_id, user_id)
    expires_in = _link_seconds(expires_days)
    token = store.new_link(user_id, expires_in)
    return _invitation(request, store.project(project_id), user["name"], token, expires_in)


@router.post("/projects/{project_id}/annotators/{user_id}/revoke")
def revoke_link(request: Request, project_id: int, user_id: int):
    user = _project_member(request, project_id, user_id)
    get_store(request).revoke_link(user_id)
    return back(project_id, f"{isolate(user['name'])}'s login link no longer works and they are logged out")


@router.post("/projects/{project_id}/annotators/{user_id}/remove")
def remove(request: Request, project_id: int, user_id: int):
    user = _project_member(request, project_id, user_id)
    unassigned = get_store(request).remove_user(user_id)
    return back(
        project_id,
        f"{isolate(user['name'])} removed: logged out, {unassigned} unvoted items freed (assign again to hand "
        "them to others); their votes are kept",
    )


@router.post("/projects/{project_id}/assign")
def assign(request: Request, project_id: int):
    report = assign_items(get_store(request), project_id)
    return back(project_id, report.summary())


@router.post("/projects/{project_id}/generate")
def generate(
    request: Request,
    project_id: int,
    model: str = Form(...),
    max_new_tokens: int = Form(128),
    temperature: float = Form(0.7),
    top_p: float = Form(0.9),
    seed: int = Form(0),
):
    store = get_store(request)
    if not store.item_counts(project_id)["pending"]:
        raise StoreError("no prompts are waiting for candidates: import prompts first")
    if not 1 <= max_new_tokens <= 4096 or temperature <= 0 or not 0 < top_p <= 1:
        raise StoreError("need 1 <= max new tokens <= 4096, temperature > 0 and 0 < top p <= 1")
    work = jobs.generation_work(
        store,
        project_id,
        model.strip(),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        answers=1 if store.project(project_id)["kind"] == "thumbs" else 2,
    )
    jobs.start_job(store, project_id, "generate", work)
    return back(project_id, f"generation started with {model.strip()}")


@router.post("/projects/{project_id}/judge")
def auto_label(request: Request, project_id: int, judge: str = Form(...)):
    store = get_store(request)
    _pairwise_only(store, project_id, "auto-labeling")
    try:
        work = jobs.judge_work(store, project_id, judge.strip())
    # JudgeError (a DataError, so a ValueError) for a bad name; ModelLoadError (a RuntimeError)
    # for an rm: folder that does not load. Both are one-line messages.
    except (ValueError, RuntimeError) as error:
        raise StoreError(str(error)) from None
    jobs.start_job(store, project_id, "judge", work)
    return back(project_id, f"auto-labeling with {judge.strip()} started")


@router.post("/projects/{project_id}/prioritize")
def prioritize(request: Request, project_id: int, reward_model: str = Form("")):
    """Active selection: reorder the queues (a job, since a reward model may have to score items)."""
    store = get_store(request)
    _pairwise_only(store, project_id, "reordering the queues")
    try:
        work = jobs.prioritize_work(store, project_id, reward_model.strip())
    except (ValueError, RuntimeError) as error:  # a bad rm: name, as for auto-labeling
        raise StoreError(str(error)) from None
    jobs.start_job(store, project_id, "prioritize", work)
    return back(project_id, "reordering the queues by what a vote would teach")


@router.get("/jobs/{job_id}")
def job_status(request: Request, job_id: int):
    job = get_store(request).job(job_id)
    if job is None:
        raise HTTPException(404, "no such job")
    keys = ("id", "kind", "status", "done", "total", "message")
    return JSONResponse({k: job[k] for k in keys})

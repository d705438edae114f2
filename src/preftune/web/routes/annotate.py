"""The annotator's pages: one item at a time from their own queue, and the vote.

An annotator reaches an item only through their own assignment (`votes.assignment_for`); anything
else is 403, whether the item belongs to someone else or does not exist, so ids reveal nothing.
The page names the sides "left"/"right"; the vote is translated to 'a'/'b' here, through the
order stored with the assignment, which is also the order the page was rendered in. A thumbs
project shows one answer and takes 'up', 'down' or 'skip' as they are.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse

from preftune.web import votes
from preftune.web.render import render, wants_json
from preftune.web.security import get_store, require_annotator

router = APIRouter(prefix="/annotate", dependencies=[Depends(require_annotator)])

DISPLAY_CHOICES = ("left", "right", "tie", "both_bad", "skip")
THUMBS_CHOICES = ("up", "down", "skip")
STRENGTH_VALUES = ("", "1", "2", "3", "4")


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


def _item_page(request: Request, session: dict[str, Any], assignment: dict[str, Any]):
    store = get_store(request)
    item = store.item(assignment["item_id"])
    if assignment["shown_at"] is None:
        votes.mark_shown(store, assignment["id"])
    counts = votes.queue_counts(store, session["user_id"])
    done, total = counts["done"], counts["total"]
    project = store.project(item["project_id"])
    if project["kind"] == "thumbs":
        return _thumbs_page(request, session, project, item, counts)
    left_key = assignment["shown_left"]
    left, right = item[f"response_{left_key}"], item[f"response_{_other(left_key)}"]
    if wants_json(request):
        return JSONResponse(
            {
                "item_id": item["id"],
                "prompt": item["prompt"],
                "left": left,
                "right": right,
                "vote_url": f"/annotate/items/{item['id']}/vote",
                "done": done,
                "total": total,
                # For script clients; as safe here as in the page: other origins cannot read it.
                "csrf": session["csrf"],
            }
        )
    # Judges' picks in the page's terms (A is whatever is on the left for this person).
    side = {left_key: "A is better", _other(left_key): "B is better", "tie": "a tie", "both_bad": "both bad"}
    suggestions = (
        [(name, side.get(choice, choice)) for name, choice in votes.judge_picks(store, item["id"])]
        if project["show_suggestions"] else []
    )  # fmt: skip
    return render(
        request,
        "annotate.html",
        title=project["name"],
        project=project,
        item=item,
        left=left,
        right=right,
        done=done,
        total=total,
        vote_id=str(uuid.uuid4()),
        strengths=list(enumerate(votes.STRENGTHS))[1:],
        counts=counts,
        suggestions=suggestions,
        can_undo=votes.last_vote(store, session["user_id"]) is not None,
        notice=request.query_params.get("notice", "")[:200],
    )


def _thumbs_page(request: Request, session: dict[str, Any], project: dict[str, Any], item: dict[str, Any], counts: dict[str, int]):
    """One answer, thumbs up or down (a thumbs project)."""
    if wants_json(request):
        return JSONResponse({
            "item_id": item["id"], "prompt": item["prompt"], "answer": item["response_a"],
            "vote_url": f"/annotate/items/{item['id']}/vote", "choices": list(THUMBS_CHOICES),
            "done": counts["done"], "total": counts["total"], "csrf": session["csrf"],
        })  # fmt: skip
    return render(
        request, "annotate_thumbs.html", title=project["name"], project=project, item=item, answer=item["response_a"],
        done=counts["done"], total=counts["total"], vote_id=str(uuid.uuid4()), counts=counts,
        can_undo=votes.last_vote(get_store(request), session["user_id"]) is not None,
        notice=request.query_params.get("notice", "")[:200],
    )  # fmt: skip


@router.get("")
def next_item(request: Request, session: dict = Depends(require_annotator)):
    store = get_store(request)
    assignment = votes.next_assignment(store, session["user_id"])
    if assignment is None:
        counts = votes.queue_counts(store, session["user_id"])
        if wants_json(request):
            return JSONResponse({"item_id": None, **counts})
        return render(
            request, "done.html", title="Done", counts=counts,
            can_undo=votes.last_vote(store, session["user_id"]) is not None,
        )  # fmt: skip
    return _item_page(request, session, assignment)


@router.post("/undo")
def undo(request: Request, session: dict = Depends(require_annotator)):
    """Take back the last vote and show its item again (see `votes.undo_last_vote`)."""
    item_id = votes.undo_last_vote(get_store(request), session["user_id"])
    if wants_json(request):
        return JSONResponse({"item_id": item_id, "next": f"/annotate/items/{item_id}"})
    notice = quote("Your last vote was taken back: vote again.")
    return RedirectResponse(f"/annotate/items/{item_id}?notice={notice}", status_code=303)


@router.get("/items/{item_id}")
def show_item(request: Request, item_id: int, session: dict = Depends(require_annotator)):
    assignment = votes.assignment_for(get_store(request), session["user_id"], item_id)
    if assignment is None:
        raise HTTPException(403, "this item is not assigned to you")
    if assignment["done"]:
        # Never the same item twice: a voted item sends you on to the next one.
        return RedirectResponse("/annotate", status_code=303)
    return _item_page(request, session, assignment)


@router.get("/guidelines")
def guidelines(request: Request, session: dict = Depends(require_annotator)):
    project = get_store(request).project(session["project_id"])
    return render(request, "guidelines.html", title="Guidelines", project=project)


@router.post("/items/{item_id}/vote")
def vote(
    request: Request,
    item_id: int,
    vote_id: str = Form(...),
    choice: str = Form(...),
    strength: str = Form(""),
    rationale: str = Form(""),
    session: dict = Depends(require_annotator),
):
    store = get_store(request)
    assignment = votes.assignment_for(store, session["user_id"], item_id)
    if assignment is None:
        raise HTTPException(403, "this item is not assigned to you")
    shown = THUMBS_CHOICES if store.project(assignment["project_id"])["kind"] == "thumbs" else DISPLAY_CHOICES
    if choice not in shown:
        raise HTTPException(400, f"choice must be one of {', '.join(shown)}")
    stored_choice = {"left": assignment["shown_left"], "right": _other(assignment["shown_left"])}.get(
        choice, choice
    )
    # Exactly the documented values: str.isdigit() also takes '²' and '٣', and int() of 5,000 digits
    # raises past Python's conversion limit.
    if strength not in STRENGTH_VALUES:
        raise HTTPException(400, "strength must be 1, 2, 3 or 4 (or left empty)")
    strength_value = int(strength) if strength and stored_choice in ("a", "b") else None
    recorded, created = votes.record_vote(
        store, session["user_id"], item_id, vote_id, stored_choice, strength_value, rationale.strip()
    )
    if wants_json(request):
        return JSONResponse(
            {
                "vote_id": recorded["vote_uid"],
                "choice": recorded["choice"],
                "created": created,
                "next": "/annotate",
            }
        )
    return RedirectResponse("/annotate?voted=1", status_code=303)

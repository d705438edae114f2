"""The annotator's pages: one item at a time from their own queue, and the vote.

An annotator reaches an item only through their own assignment (`votes.open_item` for the page,
`votes.record_vote` for the vote); anything else is 403, whether the item belongs to someone else
or does not exist, so ids reveal nothing. The page names the sides "left"/"right"; the vote is
translated to 'a'/'b' in `votes.record_vote`, through the order stored with the assignment, which
is also the order the page was rendered in. A thumbs
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
from preftune.web.security import (
    checks_session_itself,
    get_store,
    require_annotator,
    session_ended,
    session_token_hash,
)

router = APIRouter(prefix="/annotate", dependencies=[Depends(require_annotator)])

THUMBS_CHOICES = votes.SHOWN_CHOICES["thumbs"]
STRENGTH_VALUES = ("", "1", "2", "3", "4")


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


def item_json(session: dict[str, Any], assignment: dict[str, Any] | None, counts: dict[str, int]) -> dict[str, Any]:
    """The JSON form of the annotate page (script clients, `bench/labeling_load.py`), for an
    assignment from `votes.open_item`, or None when the queue is finished. Also the hot route's."""
    if assignment is None:
        return {"item_id": None, **counts}
    item, project = assignment["item"], assignment["project"]
    vote_url = f"/annotate/items/{item['id']}/vote"
    if project["kind"] == "thumbs":
        return {
            "item_id": item["id"], "prompt": item["prompt"], "answer": item["response_a"], "vote_url": vote_url,
            "choices": list(THUMBS_CHOICES), "done": counts["done"], "total": counts["total"], "csrf": session["csrf"],
        }  # fmt: skip
    left_key = assignment["shown_left"]
    return {
        "item_id": item["id"],
        "prompt": item["prompt"],
        "left": item[f"response_{left_key}"],
        "right": item[f"response_{_other(left_key)}"],
        "vote_url": vote_url,
        "done": counts["done"],
        "total": counts["total"],
        # For script clients; as safe here as in the page: other origins cannot read it.
        "csrf": session["csrf"],
    }


def _item_page(request: Request, session: dict[str, Any], assignment: dict[str, Any], counts: dict[str, int]):
    """The page for an assignment from `votes.open_item` (which carries its item and project)."""
    if wants_json(request):
        return JSONResponse(item_json(session, assignment, counts))
    item, project = assignment["item"], assignment["project"]
    done, total = counts["done"], counts["total"]
    if project["kind"] == "thumbs":
        return _thumbs_page(request, session, project, item, counts)
    left_key = assignment["shown_left"]
    left, right = item[f"response_{left_key}"], item[f"response_{_other(left_key)}"]
    store = get_store(request)
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
    return render(
        request, "annotate_thumbs.html", title=project["name"], project=project, item=item, answer=item["response_a"],
        done=counts["done"], total=counts["total"], vote_id=str(uuid.uuid4()), counts=counts,
        can_undo=votes.last_vote(get_store(request), session["user_id"]) is not None,
        notice=request.query_params.get("notice", "")[:200],
    )  # fmt: skip


@router.get("")
def next_item(request: Request, session: dict = Depends(require_annotator)):
    store = get_store(request)
    assignment, counts = votes.open_item(store, session["user_id"])
    if assignment is None:
        if wants_json(request):
            return JSONResponse(item_json(session, None, counts))
        return render(
            request, "done.html", title="Done", counts=counts,
            can_undo=votes.last_vote(store, session["user_id"]) is not None,
        )  # fmt: skip
    return _item_page(request, session, assignment, counts)


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
    assignment, counts = votes.open_item(get_store(request), session["user_id"], item_id)
    if assignment is None:
        raise HTTPException(403, "this item is not assigned to you")
    if assignment["done"]:
        # Never the same item twice: a voted item sends you on to the next one.
        return RedirectResponse("/annotate", status_code=303)
    return _item_page(request, session, assignment, counts)


@router.get("/guidelines")
def guidelines(request: Request, session: dict = Depends(require_annotator)):
    project = get_store(request).project(session["project_id"])
    return render(request, "guidelines.html", title="Guidelines", project=project)


@router.post("/items/{item_id}/vote")
@checks_session_itself
def vote(
    request: Request,
    item_id: int,
    vote_id: str = Form(...),
    choice: str = Form(...),
    strength: str = Form(""),
    rationale: str = Form(""),
    session: dict = Depends(require_annotator),
):
    recorded, created = store_vote(request, session, item_id, vote_id, choice, strength, rationale)
    if wants_json(request):
        return JSONResponse(vote_json(recorded, created))
    return RedirectResponse("/annotate?voted=1", status_code=303)


def store_vote(
    request: Request, session: dict[str, Any], item_id: int, vote_id: str, choice: str, strength: str, rationale: str
) -> tuple[dict[str, Any], bool]:
    """Store a vote as the form sent it: (the vote, whether this request created it), or an
    HTTPException. The one vote-storing path, for this router and the hot route alike."""
    # Exactly the documented values: str.isdigit() also takes '²' and '٣', and int() of 5,000 digits
    # raises past Python's conversion limit.
    if strength not in STRENGTH_VALUES:
        raise HTTPException(400, "strength must be 1, 2, 3 or 4 (or left empty)")
    try:
        # One transaction: the session re-checked, the choice read through the stored order, the
        # vote stored and the assignment marked done (see `votes.record_vote`).
        return votes.record_vote(
            get_store(request), session["user_id"], item_id, vote_id, choice, int(strength) if strength else None,
            rationale.strip(), as_shown=True, session_token_hash=session_token_hash(request),
        )  # fmt: skip
    except votes.SessionEnded:
        raise session_ended(request) from None
    except votes.NotAssigned:
        raise HTTPException(403, "this item is not assigned to you") from None


def vote_json(recorded: dict[str, Any], created: bool) -> dict[str, Any]:
    """The JSON answer to a stored vote."""
    return {"vote_id": recorded["vote_uid"], "choice": recorded["choice"], "created": created, "next": "/annotate"}

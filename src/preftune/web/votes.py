"""An annotator's queue and their votes.

Votes are stored in item terms ('a', 'b', ...), never as 'left'/'right': the page translates what
was pressed through the assignment's stored order, and the vote keeps a copy of that order.

Exactly-once recording rests on two unique constraints, not on luck: `vote_uid` (a retry of the same
submission returns the vote already stored) and `assignment_id` (a second, different submission for
the same item is refused). Both hold under SQLite and PostgreSQL alike.

The annotate page and the vote are the hot path (one request each per vote): `open_item` and
`record_vote` each do their work in one connection and one transaction, with statements built once
at import (SQLAlchemy then reuses their compiled form): the page is one SELECT (the next item with
the queue's counts as scalar subqueries, only the columns the page uses) plus the first-shown
UPDATE; the vote is its target's SELECT, the INSERT and the UPDATE that marks it done.
`tests/web/test_labeling_request_counts.py` holds them to that count.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from preftune.web import db
from preftune.web.assign import judge_assignment
from preftune.web.store import Store, StoreError, check_text

CHOICES = ("a", "b", "tie", "both_bad", "skip", "up", "down")
# What each project kind takes: a thumbs project's one answer is good or bad, never "a".
CHOICES_BY_KIND = {"pairwise": ("a", "b", "tie", "both_bad", "skip"), "thumbs": ("up", "down", "skip")}
# Index = stored strength; the words annotators see.
STRENGTHS = (None, "negligibly", "slightly", "clearly", "much")
MAX_RATIONALE = 5000
# How long a vote can be taken back with Undo: long enough to notice a slip, short enough that
# the votes an export or a training run already read stay put.
UNDO_SECONDS = 10 * 60
_VOTE_UID = re.compile(r"^[A-Za-z0-9:_.\-]{8,100}$")


class NotAssigned(StoreError):
    """The item is not in this person's queue (maps to HTTP 403)."""


class AlreadyVoted(StoreError):
    """This person already voted on the item with another vote id (maps to HTTP 409)."""


class SessionEnded(StoreError):
    """The login session the vote came with is no longer live (the route answers 401)."""


_a, _v, _i, _p, _s, _u = db.assignments, db.votes, db.items, db.projects, db.sessions, db.users
# The queue's counts for bindparam("user_id"): total, done (answered or skipped), skipped.
_COUNT_TOTAL = select(func.count()).where(_a.c.user_id == bindparam("user_id")).scalar_subquery()
_COUNT_DONE = (
    select(func.count()).where(_a.c.user_id == bindparam("user_id"), _a.c.done.is_(True)).scalar_subquery()
)
_COUNT_SKIPPED = (
    select(func.count()).where(_v.c.user_id == bindparam("user_id"), _v.c.choice == "skip").scalar_subquery()
)
_QUEUE_COUNTS = select(_COUNT_TOTAL, _COUNT_DONE, _COUNT_SKIPPED)
# What the annotate page uses of the assignment, its item (prefixed item__) and project (project__).
_PAGE_COLUMNS = [_a.c.id, _a.c.item_id, _a.c.project_id, _a.c.shown_left, _a.c.shown_at, _a.c.done]
_PAGE_COLUMNS += [c.label(f"item__{c.name}") for c in (_i.c.id, _i.c.prompt, _i.c.response_a, _i.c.response_b)]
_PAGE_COLUMNS += [
    c.label(f"project__{c.name}") for c in (_p.c.id, _p.c.name, _p.c.guideline, _p.c.kind, _p.c.show_suggestions)
]
# The page's assignment and the queue's counts in one row: one statement instead of two per view.
# The counts ride along as scalar subqueries (labelled count__); a finished queue returns no row
# and is counted on its own (`open_item`).
_ASSIGNMENT_PAGE = (
    select(
        *_PAGE_COLUMNS,
        _COUNT_TOTAL.label("count__total"),
        _COUNT_DONE.label("count__done"),
        _COUNT_SKIPPED.label("count__skipped"),
    )
    .join(_i, _i.c.id == _a.c.item_id)
    .join(_p, _p.c.id == _a.c.project_id)
)
_NEXT_PAGE = (
    _ASSIGNMENT_PAGE.where(_a.c.user_id == bindparam("user_id"), _a.c.done.is_(False))
    .order_by(_a.c.position)
    .limit(1)
)
_ITEM_PAGE = _ASSIGNMENT_PAGE.where(
    _a.c.user_id == bindparam("user_id"), _a.c.item_id == bindparam("item_id")
)
_MARK_SHOWN = (
    update(_a)
    .where(_a.c.id == bindparam("assignment_id"), _a.c.shown_at.is_(None))
    .values(shown_at=bindparam("now"))
)
_LIVE_SESSION = exists().where(
    _s.c.token_hash == bindparam("token_hash"),
    _s.c.user_id == bindparam("user_id"),
    _s.c.expires_at > bindparam("now"),
    _u.c.id == _s.c.user_id,
    _u.c.removed_at.is_(None),
)
# The vote's assignment with its project kind and whether the login session is live, in one row.
_VOTE_TARGET = (
    select(_a, _p.c.kind, _LIVE_SESSION.label("session_live"))
    .join(_p, _p.c.id == _a.c.project_id)
    .where(_a.c.user_id == bindparam("user_id"), _a.c.item_id == bindparam("item_id"))
)
_SESSION_IS_LIVE = select(_LIVE_SESSION)
_VOTE_BY_UID = select(_v).where(_v.c.vote_uid == bindparam("vote_uid"))
_VOTE_BY_ASSIGNMENT = select(_v).where(_v.c.assignment_id == bindparam("assignment_id"))
_INSERT_VOTE = insert(_v)
_MARK_DONE = update(_a).where(_a.c.id == bindparam("assignment_id")).values(done=True)
# What the page offers, by project kind; 'left'/'right' become 'a'/'b' through the shown order.
SHOWN_CHOICES = {"pairwise": ("left", "right", "tie", "both_bad", "skip"), "thumbs": ("up", "down", "skip")}


def open_item(
    store: Store, user_id: int, item_id: int | None = None
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """Everything the annotate page needs, in one transaction: (assignment, queue counts).

    The assignment is the next undone one in the person's queue, or the one for `item_id`; it
    carries its decoded item as "item" and its project as "project", and is marked shown the first
    time (the clock for seconds-per-vote). None when the queue is finished or the item is not theirs.
    A write transaction even when nothing needs marking: on SQLite a read that turns into a write
    can fail at once with SQLITE_BUSY (see `db.py`), and nearly every page view is a first showing.
    Not a durable one: a power cut may lose a shown time (the vote then has no seconds), never a
    vote, and the page view is spared an fsync under SQLite's one write lock.
    """
    with store.write(durable=False) as c:
        params = {"user_id": user_id} if item_id is None else {"user_id": user_id, "item_id": item_id}
        row = c.execute(_NEXT_PAGE if item_id is None else _ITEM_PAGE, params).first()
        if row is None:
            return None, _queue_counts(c, user_id)
        assignment, counts = _split_page_row(row)
        if assignment["shown_at"] is None and not assignment["done"]:
            c.execute(_MARK_SHOWN, {"assignment_id": assignment["id"], "now": time.time()})
    return assignment, counts


def _split_page_row(row: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """(assignment with "item" and "project", queue counts) from a row of `_ASSIGNMENT_PAGE`."""
    assignment, item, project, counted = {}, {}, {}, {}
    for key, value in row._mapping.items():
        if key.startswith("item__"):
            item[key[6:]] = value
        elif key.startswith("project__"):
            project[key[9:]] = value
        elif key.startswith("count__"):
            counted[key[7:]] = value
        else:
            assignment[key] = value
    item["prompt"] = json.loads(item["prompt"])
    assignment["item"], assignment["project"] = item, project
    return assignment, _counts(counted["total"], counted["done"], counted["skipped"])


def next_assignment(store: Store, user_id: int) -> dict[str, Any] | None:
    """The first undone assignment in the person's queue, or None when they are finished."""
    a = db.assignments
    query = select(a).where(a.c.user_id == user_id, a.c.done.is_(False)).order_by(a.c.position).limit(1)
    with store.read() as c:
        row = c.execute(query).first()
    return None if row is None else dict(row._mapping)


def assignment_for(store: Store, user_id: int, item_id: int) -> dict[str, Any] | None:
    """This person's assignment for an item, or None: the only door to an item for an annotator."""
    a = db.assignments
    with store.read() as c:
        row = c.execute(select(a).where(a.c.user_id == user_id, a.c.item_id == item_id)).first()
    return None if row is None else dict(row._mapping)


def mark_shown(store: Store, assignment_id: int) -> None:
    """Record the first time an item is shown (the clock for seconds-per-vote)."""
    a = db.assignments
    with store.write() as c:
        c.execute(
            update(a).where(a.c.id == assignment_id, a.c.shown_at.is_(None)).values(shown_at=time.time())
        )


def progress(store: Store, user_id: int) -> tuple[int, int]:
    """(done, total) assignments for a person; done counts skips too (see `queue_counts`)."""
    counts = queue_counts(store, user_id)
    return counts["done"], counts["total"]


def queue_counts(store: Store, user_id: int) -> dict[str, int]:
    """A person's queue: total, done (answered or skipped), and of those voted and skipped."""
    with store.read() as c:
        return _queue_counts(c, user_id)


def _queue_counts(c: Connection, user_id: int) -> dict[str, int]:
    return _counts(*c.execute(_QUEUE_COUNTS, {"user_id": user_id}).one())


def _counts(total: int, done: int, skipped: int) -> dict[str, int]:
    return {"total": total, "done": done, "voted": done - skipped, "skipped": skipped}


def last_vote(store: Store, user_id: int) -> dict[str, Any] | None:
    """The person's most recent vote while it can still be undone (`UNDO_SECONDS`), or None."""
    v = db.votes
    query = select(v).where(v.c.user_id == user_id).order_by(v.c.id.desc()).limit(1)
    with store.read() as c:
        row = c.execute(query).first()
    if row is None or row.created_at < time.time() - UNDO_SECONDS:
        return None
    return dict(row._mapping)


def undo_last_vote(store: Store, user_id: int) -> int:
    """Take back the person's most recent vote (within `UNDO_SECONDS`): the vote is deleted and the
    item goes back to the front of their queue. Returns the item id; StoreError if nothing to undo.
    Repeating it steps further back, one vote at a time."""
    v, a = db.votes, db.assignments
    with store.write() as c:
        row = c.execute(select(v).where(v.c.user_id == user_id).order_by(v.c.id.desc()).limit(1)).first()
        if row is None or row.created_at < time.time() - UNDO_SECONDS:
            raise StoreError(f"no vote to undo (a vote can be undone for {UNDO_SECONDS // 60} minutes)")
        c.execute(delete(v).where(v.c.id == row.id))
        c.execute(update(a).where(a.c.id == row.assignment_id).values(done=False))
    return row.item_id


def validate_vote(vote_uid: str, choice: str, strength: int | None, rationale: str) -> None:
    _validate_uid_and_rationale(vote_uid, rationale)
    _validate_choice(choice, strength)


def _validate_uid_and_rationale(vote_uid: str, rationale: str) -> None:
    if not isinstance(vote_uid, str) or not _VOTE_UID.match(vote_uid):
        raise StoreError("vote id must be 8-100 characters of letters, digits and : _ . -")
    if len(rationale) > MAX_RATIONALE:
        raise StoreError(f"rationale is longer than {MAX_RATIONALE} characters")
    check_text(rationale, "the rationale")


def _validate_choice(choice: str, strength: int | None) -> None:
    if choice not in CHOICES:
        raise StoreError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
    if strength is not None and (choice not in ("a", "b") or strength not in range(1, len(STRENGTHS))):
        raise StoreError("strength (1-4) goes only with an 'a' or 'b' choice")


def record_vote(
    store: Store,
    user_id: int,
    item_id: int,
    vote_uid: str,
    choice: str,
    strength: int | None = None,
    rationale: str = "",
    *,
    as_shown: bool = False,
    session_token_hash: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a vote exactly once. Returns (the vote, whether this call created it).

    Raises NotAssigned when the item is not in the person's queue, AlreadyVoted when they voted on
    it under another vote id, StoreError on a malformed vote.

    With `as_shown`, `choice` is what the page offered (`SHOWN_CHOICES`), translated here through
    the assignment's stored order, and a strength that goes with neither side is dropped. With
    `session_token_hash`, the vote is stored only while that login session of this person is live,
    checked in the same transaction (SessionEnded otherwise): the route can then trust a cached
    session for its CSRF check. One transaction either way, acknowledged only after its commit.
    """
    _validate_uid_and_rationale(vote_uid, rationale)
    if not as_shown:
        _validate_choice(choice, strength)
    now = time.time()
    session_check = {"token_hash": session_token_hash, "now": now}
    try:
        with store.write() as c:
            assignment = c.execute(
                _VOTE_TARGET, {"user_id": user_id, "item_id": item_id, **session_check}
            ).first()
            if session_token_hash is not None:
                live = assignment.session_live if assignment is not None else c.execute(
                    _SESSION_IS_LIVE, {"user_id": user_id, **session_check}
                ).scalar()  # fmt: skip
                if not live:
                    raise SessionEnded("the login session has ended")
            if assignment is None:
                raise NotAssigned(f"item {item_id} is not assigned to you")
            kind = assignment.kind
            if as_shown:
                choice, strength = _from_shown(choice, strength, assignment.shown_left, kind)
                _validate_choice(choice, strength)
            if choice not in CHOICES_BY_KIND[kind]:
                raise StoreError(f"a {kind} project takes {', '.join(CHOICES_BY_KIND[kind])}, not {choice!r}")
            if assignment.done:
                # A retry of the vote that made it done (same vote id), or a second vote: under READ
                # COMMITTED a twin of this request may also have committed since it started.
                stored = c.execute(_VOTE_BY_ASSIGNMENT, {"assignment_id": assignment.id}).first()
                if stored is not None and stored.vote_uid == vote_uid:
                    return dict(stored._mapping), False
                reused = c.execute(_VOTE_BY_UID, {"vote_uid": vote_uid}).first()
                if reused is not None:
                    return _same_submitter(reused, user_id, item_id), False  # another item's: refused
                raise AlreadyVoted(f"you already voted on item {item_id}")
            values = dict(
                vote_uid=vote_uid,
                assignment_id=assignment.id,
                project_id=assignment.project_id,
                item_id=item_id,
                user_id=user_id,
                choice=choice,
                strength=strength,
                rationale=rationale,
                shown_left=assignment.shown_left,
                seconds=None if assignment.shown_at is None else max(now - assignment.shown_at, 0.0),
                created_at=now,
            )
            # No lookup of the vote id first: a reused one fails the unique constraint, handled below.
            values["id"] = c.execute(_INSERT_VOTE, values).inserted_primary_key[0]
            c.execute(_MARK_DONE, {"assignment_id": assignment.id})
    except IntegrityError:
        # The vote id is taken (by another vote, or by a concurrent duplicate of this one that won
        # the race under PostgreSQL READ COMMITTED), or the assignment's vote is: what is stored?
        with store.read() as c:
            existing = c.execute(_VOTE_BY_UID, {"vote_uid": vote_uid}).first()
        if existing is None:
            raise AlreadyVoted(f"you already voted on item {item_id}") from None
        return _same_submitter(existing, user_id, item_id), False
    return values, True


def _from_shown(shown: str, strength: int | None, shown_left: str, kind: str) -> tuple[str, int | None]:
    """A choice in the page's terms -> (choice in item terms, strength kept only with a side)."""
    offered = SHOWN_CHOICES[kind]
    if shown not in offered:
        raise StoreError(f"choice must be one of {', '.join(offered)}")
    choice = {"left": shown_left, "right": "b" if shown_left == "a" else "a"}.get(shown, shown)
    return choice, strength if choice in ("a", "b") else None


def _same_submitter(existing: Any, user_id: int, item_id: int) -> dict[str, Any]:
    if existing.user_id != user_id or existing.item_id != item_id:
        raise AlreadyVoted("this vote id was already used for another vote")
    return dict(existing._mapping)


def record_judge_vote(store: Store, project_id: int, judge_user_id: int, item_id: int, choice: str) -> bool:
    """A judge's vote on an item; re-running a judge never adds a second one. True if new."""
    vote_uid = f"judge:{judge_user_id}:{item_id}"
    validate_vote(vote_uid, choice, None, "")
    with store.write() as c:
        if c.execute(select(db.votes.c.id).where(db.votes.c.vote_uid == vote_uid)).first():
            return False
        assignment_id = judge_assignment(c, project_id, item_id, judge_user_id)
        values = dict(vote_uid=vote_uid, assignment_id=assignment_id, project_id=project_id, item_id=item_id)
        c.execute(
            insert(db.votes).values(
                **values,
                user_id=judge_user_id,
                choice=choice,
                shown_left="a",
                rationale="",
                created_at=time.time(),
            )
        )
        c.execute(update(db.assignments).where(db.assignments.c.id == assignment_id).values(done=True))
    return True


def project_votes(store: Store, project_id: int) -> list[dict[str, Any]]:
    """Every vote in a project with its voter's name and role and the item's gold answer."""
    v, u, i = db.votes, db.users, db.items
    query = (
        select(v, u.c.name.label("user_name"), u.c.role.label("user_role"), i.c.gold.label("gold"))
        .join(u, u.c.id == v.c.user_id)
        .join(i, i.c.id == v.c.item_id)
        .where(v.c.project_id == project_id)
        .order_by(v.c.id)
    )
    with store.read() as c:
        return [dict(r._mapping) for r in c.execute(query)]


def judge_picks(store: Store, item_id: int) -> list[tuple[str, str]]:
    """(judge name, choice in item terms) for each judge that voted on the item: the AI suggestions."""
    v, u = db.votes, db.users
    query = (
        select(u.c.name, v.c.choice)
        .join(u, u.c.id == v.c.user_id)
        .where(v.c.item_id == item_id, u.c.role == "judge")
        .order_by(u.c.name)
    )
    with store.read() as c:
        return [tuple(row) for row in c.execute(query)]

"""An annotator's queue and their votes.

Votes are stored in item terms ('a', 'b', ...), never as 'left'/'right': the page translates what
was pressed through the assignment's stored order, and the vote keeps a copy of that order.

Exactly-once recording rests on two unique constraints, not on luck: `vote_uid` (a retry of the same
submission returns the vote already stored) and `assignment_id` (a second, different submission for
the same item is refused). Both hold under SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import delete, func, insert, select, update
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
    a, v = db.assignments, db.votes
    query = select(func.count(), func.count().filter(a.c.done.is_(True))).where(a.c.user_id == user_id)
    skips = select(func.count()).where(v.c.user_id == user_id, v.c.choice == "skip")
    with store.read() as c:
        total, done = c.execute(query).one()
        skipped = c.execute(skips).scalar()
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
    if not isinstance(vote_uid, str) or not _VOTE_UID.match(vote_uid):
        raise StoreError("vote id must be 8-100 characters of letters, digits and : _ . -")
    if choice not in CHOICES:
        raise StoreError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
    if strength is not None and (choice not in ("a", "b") or strength not in range(1, len(STRENGTHS))):
        raise StoreError("strength (1-4) goes only with an 'a' or 'b' choice")
    if len(rationale) > MAX_RATIONALE:
        raise StoreError(f"rationale is longer than {MAX_RATIONALE} characters")
    check_text(rationale, "the rationale")


def record_vote(
    store: Store,
    user_id: int,
    item_id: int,
    vote_uid: str,
    choice: str,
    strength: int | None = None,
    rationale: str = "",
) -> tuple[dict[str, Any], bool]:
    """Store a vote exactly once. Returns (the vote, whether this call created it).

    Raises NotAssigned when the item is not in the person's queue, AlreadyVoted when they voted on
    it under another vote id, StoreError on a malformed vote.
    """
    validate_vote(vote_uid, choice, strength, rationale)
    v, a = db.votes, db.assignments
    try:
        with store.write() as c:
            existing = c.execute(select(v).where(v.c.vote_uid == vote_uid)).first()
            if existing is not None:
                return _same_submitter(existing, user_id, item_id), False
            assignment = c.execute(select(a).where(a.c.user_id == user_id, a.c.item_id == item_id)).first()
            if assignment is None:
                raise NotAssigned(f"item {item_id} is not assigned to you")
            kind = c.execute(select(db.projects.c.kind).where(db.projects.c.id == assignment.project_id)).scalar()
            if choice not in CHOICES_BY_KIND[kind]:
                raise StoreError(f"a {kind} project takes {', '.join(CHOICES_BY_KIND[kind])}, not {choice!r}")
            if assignment.done:
                # Under READ COMMITTED a twin of this request may have committed since the lookup
                # above: if the stored vote is this very submission, it is a retry, not a conflict.
                stored = c.execute(select(v).where(v.c.assignment_id == assignment.id)).first()
                if stored is not None and stored.vote_uid == vote_uid:
                    return dict(stored._mapping), False
                raise AlreadyVoted(f"you already voted on item {item_id}")
            now = time.time()
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
            values["id"] = c.execute(insert(v).values(**values)).inserted_primary_key[0]
            c.execute(update(a).where(a.c.id == assignment.id).values(done=True))
    except IntegrityError:
        # A concurrent duplicate won the race (PostgreSQL READ COMMITTED): return what it stored.
        with store.read() as c:
            existing = c.execute(select(v).where(v.c.vote_uid == vote_uid)).first()
        if existing is None:
            raise AlreadyVoted(f"you already voted on item {item_id}") from None
        return _same_submitter(existing, user_id, item_id), False
    return values, True


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

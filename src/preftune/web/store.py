"""The labeling store: projects, items, people, sessions and jobs over SQLAlchemy Core.

Assignment and voting live in `assign.py` and `votes.py`; they use `Store.read()` and
`Store.write()`, the two ways to open a transaction. Rows come back as plain dicts.

Secrets (login tokens, session cookies) are random 256-bit strings stored as sha256 hashes: a
high-entropy token needs no slow password hash, and a leaked database gives no working link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from preftune.web import db
from preftune.web.checks import (  # noqa: F401  (StoreError, NotFound, MAX_ID, isolate: this module's API too)
    MAX_ID,
    NotFound,
    StoreError,
    check_id,
    check_name,
    check_settings,
    check_text,
    expiry,
    isolate,
)
from preftune.web.migrations import migrate
from preftune.web.writer_lock import WriterLock, lock_path

SESSION_SECONDS = 30 * 24 * 3600
# How long a worker may serve a login session from memory (`Store.cached_session`) on page views.
# Ending a session in this process (logout, revoke, remove) clears its entry at once; another worker
# process sees it within this many seconds; state-changing requests always read the database.
SESSION_CACHE_SECONDS = 5.0
SESSION_CACHE_SIZE = 10_000
ROLES = ("admin", "annotator", "judge")
# Project kinds: two answers compared, or one answer given a thumbs up or down (unpaired, for KTO).
PROJECT_KINDS = ("pairwise", "thumbs")
GOLD_CHOICES = {"pairwise": ("a", "b", "tie", "both_bad"), "thumbs": ("up", "down")}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class NewItem:
    """An item to import: a conversation and, unless generation will fill them, two responses."""

    prompt: list[dict[str, str]]
    response_a: str | None = None
    response_b: str | None = None
    source: str | None = None
    external_id: str | None = None
    # The policies that wrote response_a and response_b, for the arena.
    model_a: str | None = None
    model_b: str | None = None


def _row(row: Any) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


class Store:
    """One database. Safe to share between threads: each call opens its own connection."""

    def __init__(self, url: str = db.DEFAULT_DB):
        self.url = url
        try:
            self.engine = db.make_engine(url)
            # SQLite: commits that need not wait for the disk (`db.make_engine`), `write(durable=False)`.
            sqlite = db.is_sqlite(self.engine)
            self.light_engine = db.make_engine(url, durable=False) if sqlite else self.engine
        except (ArgumentError, ImportError) as error:
            raise StoreError(f"{url}: not a usable database URL ({error})") from None
        lock = WriterLock(lock_path(self.engine.url.database)) if sqlite else None
        self._write_lock = lock or contextlib.nullcontext()
        # token hash -> (monotonic time read, session row): see `cached_session`.
        self._sessions: dict[str, tuple[float, dict[str, Any]]] = {}
        try:
            self.schema_version = migrate(self.engine)
        except OperationalError as error:
            self.engine.dispose()
            reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
            raise StoreError(f"{self.display_url}: cannot open the database ({reason})") from None

    @property
    def display_url(self) -> str:
        """The URL with any password masked, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()
        if self.light_engine is not self.engine:
            self.light_engine.dispose()
        if isinstance(self._write_lock, WriterLock):
            self._write_lock.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[Connection]:
        """A transaction that commits on success; on SQLite it holds the write lock from its start.

        SQLite has one writer at a time. The server's threads and worker processes queue on
        `WriterLock` instead of in SQLite's busy handler, whose sleep-and-retry polling adds up to
        100 ms per wait at the tail; the busy timeout still covers other programs (an export run
        beside the server). `durable=False`: the commit does not wait for the disk, for data a
        power cut may lose (see `db.make_engine`); never for votes.
        """
        engine = self.engine if durable else self.light_engine
        with self._write_lock, engine.connect().execution_options(preftune_write=True) as connection:
            with connection.begin():
                yield connection

    # -- projects ---------------------------------------------------------------------------------

    def create_project(
        self, name: str, guideline: str = "", overlap: int = 1, gold_rate: float = 0.0, kind: str = "pairwise"
    ) -> int:
        name = name.strip()
        if not name or len(name) > 200:
            raise StoreError("a project name needs 1 to 200 characters")
        if kind not in PROJECT_KINDS:
            raise StoreError(f"project kind must be one of {', '.join(PROJECT_KINDS)}, not {isolate(repr(kind))}")
        check_text(name, "the project name")
        check_text(guideline, "the guideline")
        check_settings(overlap, gold_rate)
        values = dict(name=name, guideline=guideline, overlap=overlap, gold_rate=gold_rate, kind=kind)
        try:
            with self.write() as c:
                return c.execute(
                    insert(db.projects).values(**values, created_at=time.time())
                ).inserted_primary_key[0]
        except IntegrityError:  # the unique name, which holds under concurrent requests too
            raise StoreError(f"a project named {isolate(repr(name))} already exists") from None

    def update_project(self, project_id: int, **changes: Any) -> None:
        allowed = {"guideline", "overlap", "gold_rate", "show_suggestions"}
        if set(changes) - allowed:
            raise StoreError(f"unknown project settings: {sorted(set(changes) - allowed)}")
        project = self.project(project_id)
        check_text(changes.get("guideline", ""), "the guideline")
        check_settings(
            changes.get("overlap", project["overlap"]), changes.get("gold_rate", project["gold_rate"])
        )
        with self.write() as c:
            c.execute(update(db.projects).where(db.projects.c.id == project_id).values(**changes))

    def project(self, project_id: int) -> dict[str, Any]:
        with self.read() as c:
            query = select(db.projects).where(db.projects.c.id == check_id(project_id, "project"))
            found = _row(c.execute(query).first())
        if found is None:
            raise NotFound(f"no project with id {project_id}")
        return found

    def project_by_name(self, name: str) -> dict[str, Any]:
        with self.read() as c:
            found = _row(c.execute(select(db.projects).where(db.projects.c.name == name)).first())
        if found is None:
            raise NotFound(f"no project named {name!r} in {self.display_url}")
        return found

    def projects(self) -> list[dict[str, Any]]:
        with self.read() as c:
            return [_row(r) for r in c.execute(select(db.projects).order_by(db.projects.c.id))]

    # -- items ------------------------------------------------------------------------------------

    def add_items(self, project_id: int, new_items: list[NewItem]) -> list[int]:
        self.project(project_id)
        now = time.time()
        ids = []
        with self.write() as c:
            for item in new_items:
                values = dict(
                    project_id=project_id,
                    prompt=json.dumps(item.prompt, ensure_ascii=False),
                    response_a=item.response_a,
                    response_b=item.response_b,
                    source=item.source,
                    external_id=item.external_id,
                    model_a=item.model_a,
                    model_b=item.model_b,
                    created_at=now,
                )
                ids.append(c.execute(insert(db.items).values(**values)).inserted_primary_key[0])
        return ids

    def items(self, project_id: int, pending: bool | None = None) -> list[dict[str, Any]]:
        """The project's items; `pending=True` only those still waiting for their two responses."""
        query = select(db.items).where(db.items.c.project_id == project_id).order_by(db.items.c.id)
        if pending is not None:
            missing = db.items.c.response_a.is_(None)
            query = query.where(missing if pending else ~missing)
        with self.read() as c:
            return [_decode_item(r) for r in c.execute(query)]

    def item(self, item_id: int) -> dict[str, Any]:
        with self.read() as c:
            found = c.execute(select(db.items).where(db.items.c.id == check_id(item_id, "item"))).first()
        if found is None:
            raise NotFound(f"no item with id {item_id}")
        return _decode_item(found)

    def set_responses(self, item_id: int, response_a: str, response_b: str | None) -> None:
        """The item's candidates: two answers, or (thumbs projects) one answer and None."""
        with self.write() as c:
            c.execute(
                update(db.items)
                .where(db.items.c.id == item_id)
                .values(response_a=response_a, response_b=response_b)
            )

    def set_gold(self, item_id: int, gold: str | None) -> None:
        """Mark an item as gold with its known answer, or unmark it with None."""
        allowed = GOLD_CHOICES[self.project(self.item(item_id)["project_id"])["kind"]]
        if gold is not None and gold not in allowed:
            raise StoreError(f"gold answer must be one of {', '.join(allowed)}, not {gold!r}")
        with self.write() as c:
            c.execute(update(db.items).where(db.items.c.id == item_id).values(gold=gold))

    def item_counts(self, project_id: int) -> dict[str, int]:
        query = select(
            func.count(),
            func.count(db.items.c.response_a),
            func.count(db.items.c.gold),
        ).where(db.items.c.project_id == project_id)
        with self.read() as c:
            total, ready, gold = c.execute(query).one()
            voted, skips = c.execute(
                select(func.count().filter(db.votes.c.choice != "skip"), func.count().filter(db.votes.c.choice == "skip"))
                .where(db.votes.c.project_id == project_id)
            ).one()
        # A skip is not a vote: "votes" here, on the quality page and in the export mean the same.
        return {"items": total, "ready": ready, "pending": total - ready, "gold": gold, "votes": voted, "skips": skips}

    # -- people and sessions ----------------------------------------------------------------------

    def create_user(
        self, name: str, role: str, project_id: int | None = None, expires_in: float | None = None
    ) -> tuple[int, str | None]:
        """Add a person (or judge) and return (user id, login token); judges get no token.

        `expires_in` (seconds): the login link stops working after that long; None: it never does.
        """
        name = check_name(name)
        if role not in ROLES:
            raise StoreError(f"role must be one of {ROLES}, not {role!r}")
        if role != "admin":
            self.project(project_id)
        token = None if role == "judge" else new_token()
        values = dict(name=name, role=role, project_id=project_id, created_at=time.time())
        values["token_hash"] = hash_token(token) if token else None
        values["token_expires_at"] = expiry(expires_in) if token else None
        try:
            with self.write() as c:
                return c.execute(insert(db.users).values(**values)).inserted_primary_key[0], token
        except IntegrityError:
            # The unique (project, name) index, not a prior lookup: a lookup races on PostgreSQL.
            raise StoreError(f"{isolate(repr(name))} is already in this project") from None

    def users(self, project_id: int, removed: bool = False) -> list[dict[str, Any]]:
        """The project's people (and judges) by id; `removed=True` also lists removed ones."""
        u = db.users
        query = select(
            u.c.id, u.c.name, u.c.role, u.c.created_at, u.c.token_expires_at, u.c.removed_at,
            (u.c.token_hash.is_not(None)).label("has_link"),
        ).where(u.c.project_id == project_id)  # fmt: skip
        if not removed:
            query = query.where(u.c.removed_at.is_(None))
        with self.read() as c:
            return [_row(r) for r in c.execute(query.order_by(u.c.id))]

    def user(self, user_id: int) -> dict[str, Any]:
        u = db.users
        query = select(u.c.id, u.c.name, u.c.role, u.c.project_id, u.c.removed_at)
        with self.read() as c:
            found = _row(c.execute(query.where(u.c.id == check_id(user_id, "user"))).first())
        if found is None:
            raise NotFound(f"no user with id {user_id}")
        return found

    def user_by_token(self, token: str) -> dict[str, Any] | None:
        """The person a login token belongs to, with `expired` set when its link ran out; None when
        no current link matches (unknown, replaced, revoked, or the person was removed)."""
        u = db.users
        query = select(u.c.id, u.c.name, u.c.role, u.c.project_id, u.c.token_expires_at).where(
            u.c.token_hash == hash_token(token), u.c.removed_at.is_(None)
        )
        with self.read() as c:
            found = _row(c.execute(query).first())
        if found is not None:
            expires = found["token_expires_at"]
            found["expired"] = expires is not None and expires <= time.time()
        return found

    def new_link(self, user_id: int, expires_in: float | None = None) -> str:
        """A fresh login link for a person; the old one stops working. Their sessions stay open."""
        user = self.user(user_id)
        if user["role"] == "judge" or user["removed_at"] is not None:
            raise StoreError(f"{isolate(repr(user['name']))} cannot log in (a judge, or removed)")
        token = new_token()
        with self.write() as c:
            c.execute(
                update(db.users)
                .where(db.users.c.id == user_id)
                .values(token_hash=hash_token(token), token_expires_at=expiry(expires_in))
            )
        return token

    def revoke_link(self, user_id: int) -> None:
        """The person's login link stops working and every session it opened ends."""
        self.user(user_id)
        with self.write() as c:
            c.execute(update(db.users).where(db.users.c.id == user_id).values(token_hash=None))
            c.execute(delete(db.sessions).where(db.sessions.c.user_id == user_id))
        self._forget_sessions_of(user_id)

    def remove_user(self, user_id: int) -> int:
        """Remove an annotator: no link, no sessions, no unvoted items (they can be re-assigned).
        Their votes stay, as the record of what they said. Returns how many items were unassigned."""
        user = self.user(user_id)
        if user["role"] == "admin":
            raise StoreError("the admin cannot be removed (use `preftune admin-link` to replace the link)")
        a = db.assignments
        with self.write() as c:
            c.execute(
                update(db.users)
                .where(db.users.c.id == user_id)
                .values(token_hash=None, removed_at=time.time())
            )
            c.execute(delete(db.sessions).where(db.sessions.c.user_id == user_id))
            freed = c.execute(delete(a).where(a.c.user_id == user_id, a.c.done.is_(False))).rowcount
        self._forget_sessions_of(user_id)
        return freed

    def has_admin(self) -> bool:
        with self.read() as c:
            return c.execute(select(db.users.c.id).where(db.users.c.role == "admin")).first() is not None

    def new_admin_token(self) -> str:
        """A fresh admin login token: creates the admin on first use, else replaces the old link
        (which stops working at once, and so do the sessions it opened)."""
        with self.read() as c:
            admin_id = c.execute(select(db.users.c.id).where(db.users.c.role == "admin")).scalar()
        if admin_id is None:
            return self.create_user("admin", "admin")[1]
        self.revoke_link(admin_id)
        return self.new_link(admin_id)

    def create_session(self, user_id: int) -> tuple[str, str]:
        """Open a session and return (cookie value, CSRF token)."""
        token, csrf, now = new_token(), secrets.token_urlsafe(32), time.time()
        values = dict(token_hash=hash_token(token), user_id=user_id, csrf=csrf, created_at=now)
        with self.write() as c:
            c.execute(delete(db.sessions).where(db.sessions.c.expires_at < now))  # keep the table small
            c.execute(insert(db.sessions).values(**values, expires_at=now + SESSION_SECONDS))
        return token, csrf

    def session(self, token: str) -> dict[str, Any] | None:
        """The live session for a cookie value, joined with its user, or None (read from the database)."""
        token_hash = hash_token(token)
        with self.read() as c:
            found = _row(c.execute(_SESSION, {"token_hash": token_hash, "now": time.time()}).first())
        if found is None:
            self._sessions.pop(token_hash, None)
        else:
            if len(self._sessions) >= SESSION_CACHE_SIZE:
                self._sessions.clear()  # crude, and rare: only stale or idle entries make it this big
            self._sessions[token_hash] = (time.monotonic(), found)
        return found

    def cached_session(self, token: str) -> dict[str, Any] | None:
        """`session`, served from this process's memory when read less than `SESSION_CACHE_SECONDS` ago.

        For page views: a page view that reads the session row every time costs a pool checkout
        and a statement per request. A session that ends elsewhere (another worker, a direct
        database edit) may still be served here for that long; its expiry time is always checked.
        """
        hit = self.session_from_cache(token)
        return hit if hit is not None else self.session(token)

    def session_from_cache(self, token: str) -> dict[str, Any] | None:
        """The cached session row if it is fresh and unexpired, else None (the database is not read)."""
        hit = self._sessions.get(hash_token(token))
        if hit is None or time.monotonic() - hit[0] >= SESSION_CACHE_SECONDS:
            return None
        return hit[1] if hit[1]["expires_at"] > time.time() else None

    def forget_session(self, token: str) -> None:
        """Drop a session from this process's cache (it ended, or the database no longer has it)."""
        self._sessions.pop(hash_token(token), None)

    def _forget_sessions_of(self, user_id: int) -> None:
        for token_hash, (_when, row) in list(self._sessions.items()):
            if row["user_id"] == user_id:
                self._sessions.pop(token_hash, None)

    def end_session(self, token: str) -> None:
        self.forget_session(token)
        with self.write() as c:
            c.execute(delete(db.sessions).where(db.sessions.c.token_hash == hash_token(token)))

    # -- background jobs --------------------------------------------------------------------------

    def create_job(self, project_id: int, kind: str, total: int = 0) -> int:
        now = time.time()
        values = dict(project_id=project_id, kind=kind, status="running", total=total, message="starting")
        with self.write() as c:
            return c.execute(
                insert(db.jobs).values(**values, created_at=now, updated_at=now)
            ).inserted_primary_key[0]

    def update_job(self, job_id: int, **changes: Any) -> None:
        with self.write() as c:
            c.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(**changes, updated_at=time.time()))

    def job(self, job_id: int) -> dict[str, Any] | None:
        with self.read() as c:
            return _row(c.execute(select(db.jobs).where(db.jobs.c.id == job_id)).first())

    def jobs(self, project_id: int) -> list[dict[str, Any]]:
        query = select(db.jobs).where(db.jobs.c.project_id == project_id).order_by(db.jobs.c.id.desc())
        with self.read() as c:
            return [_row(r) for r in c.execute(query)]

    def fail_interrupted_jobs(self) -> int:
        """At start-up, jobs still marked running died with the previous server: say so."""
        with self.write() as c:
            result = c.execute(
                update(db.jobs)
                .where(db.jobs.c.status == "running")
                .values(status="failed", message="interrupted: the server stopped", updated_at=time.time())
            )
            return result.rowcount


# Built once: SQLAlchemy caches the compiled form of a module-level statement across requests.
_SESSION = (
    select(db.sessions.c.user_id, db.sessions.c.csrf, db.sessions.c.expires_at,
           db.users.c.name, db.users.c.role, db.users.c.project_id)
    .join(db.users, db.users.c.id == db.sessions.c.user_id)
    .where(
        db.sessions.c.token_hash == bindparam("token_hash"),
        db.sessions.c.expires_at > bindparam("now"),
        db.users.c.removed_at.is_(None),
    )
)  # fmt: skip


def _decode_item(row: Any) -> dict[str, Any]:
    item = dict(row._mapping)
    item["prompt"] = json.loads(item["prompt"])
    return item

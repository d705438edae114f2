"""Database engine and tables of the labeling store (SQLAlchemy 2 Core).

The tables here are the *current* schema. `migrations.py` creates them on a fresh database and
upgrades older ones; bump `migrations.SCHEMA_VERSION` and add a migration whenever this file changes
shape.

SQLite is the default backend. It runs in WAL mode (readers never block the one writer) with a busy
timeout (writers queue instead of failing), and every write transaction starts with `BEGIN
IMMEDIATE`: taking the write lock up front means a transaction never has to upgrade a read lock,
the case where SQLite returns SQLITE_BUSY at once instead of waiting. PostgreSQL works through
psycopg 3; its default READ COMMITTED isolation plus the unique constraints below keep votes exact.
"""

from __future__ import annotations

import select as io_select

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    exc,
)
from sqlalchemy.engine import make_url

DEFAULT_DB = "sqlite:///preftune.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL: connections older than this are replaced at checkout, before a server-side idle limit
# or a proxy in between closes them under us.
POOL_RECYCLE_SECONDS = 1800
# SQLSTATE classes of a connection the server ended: 08 connection exception, 57P admin or crash
# shutdown (`pg_terminate_backend`, a restart).
_DISCONNECT_SQLSTATES = ("08", "57P")

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("guideline", Text, nullable=False, default=""),
    # Each item goes to this many distinct human annotators.
    Column("overlap", Integer, nullable=False, default=1),
    # Fraction of each annotator's queue made of gold items (known answer, used to score accuracy).
    Column("gold_rate", Float, nullable=False, default=0.0),
    # Show annotators the judges' picks (collapsed) on each item. Off by default: a visible
    # suggestion anchors people, and the labels then measure the judge as much as the people.
    Column("show_suggestions", Boolean, nullable=False, default=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    # 'pairwise' (two answers per item, which is better) | 'thumbs' (one answer in response_a,
    # thumbs up / down: the unpaired data KTO learns from).
    Column("kind", String(16), nullable=False, default="pairwise", server_default="pairwise"),
)

items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id"), nullable=False, index=True),
    # The conversation so far, JSON list of {"role", "content"}.
    Column("prompt", Text, nullable=False),
    # NULL until a generation job (or an import) supplies the two candidates.
    Column("response_a", Text),
    Column("response_b", Text),
    Column("source", String(200)),
    Column("external_id", String(200)),
    # Which policy wrote each response (model arena); NULL when not known.
    Column("model_a", String(200)),
    Column("model_b", String(200)),
    # Admin-set known answer for gold items: 'a' | 'b' | 'tie' | 'both_bad'; NULL for normal items.
    Column("gold", String(16)),
    Column("created_at", Float, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    # 'admin' | 'annotator' | 'judge' (an automatic labeler, named 'judge:NAME').
    Column("role", String(16), nullable=False),
    Column("project_id", ForeignKey("projects.id")),
    # sha256 of the login token; the token itself is shown once and never stored. NULL: revoked.
    Column("token_hash", String(64), unique=True),
    # When the login link stops working (epoch seconds); NULL: it does not expire.
    Column("token_expires_at", Float),
    # Set when an admin removes the person: no login, no queue; their votes stay in the record.
    Column("removed_at", Float),
    Column("created_at", Float, nullable=False),
    # One name per project, enforced by the database: concurrent invites cannot both win.
    # (The admin has no project; NULLs never collide, so this leaves the admin alone.)
    Index("uq_user_project_name", "project_id", "name", unique=True),
)

sessions = Table(
    "sessions",
    metadata,
    # sha256 of the session cookie value.
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", ForeignKey("users.id"), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

assignments = Table(
    "assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id"), nullable=False),
    Column("item_id", ForeignKey("items.id"), nullable=False),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    # Order in the annotator's queue.
    Column("position", Integer, nullable=False),
    # Which response is shown on the left for this annotator: 'a' or 'b' (drawn at random).
    Column("shown_left", String(1), nullable=False),
    # First time the item was shown, for seconds-per-vote.
    Column("shown_at", Float),
    Column("done", Boolean, nullable=False, default=False),
    UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),
    Index("ix_assignment_queue", "user_id", "done", "position"),
)

votes = Table(
    "votes",
    metadata,
    Column("id", Integer, primary_key=True),
    # Client-chosen id: a retried submission carries the same one and is recorded once.
    Column("vote_uid", String(100), nullable=False, unique=True),
    # One vote per assignment, whatever the client sends.
    Column("assignment_id", ForeignKey("assignments.id"), nullable=False, unique=True),
    Column("project_id", ForeignKey("projects.id"), nullable=False, index=True),
    Column("item_id", ForeignKey("items.id"), nullable=False, index=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    # In item terms: 'a' | 'b' | 'tie' | 'both_bad' | 'skip'; in a thumbs project 'up' | 'down' | 'skip'.
    Column("choice", String(16), nullable=False),
    # 1 negligibly, 2 slightly, 3 clearly, 4 much better; only with 'a' or 'b'.
    Column("strength", Integer),
    Column("rationale", Text, nullable=False, default=""),
    # Copy of the shown order ('a' or 'b' on the left) at the time of the vote.
    Column("shown_left", String(1), nullable=False),
    Column("seconds", Float),
    Column("created_at", Float, nullable=False),
    # A person's votes: the annotate page counts their skips on every view (`votes.open_item`),
    # and Undo finds their last vote. Without it both read the whole table.
    Index("ix_vote_user_choice", "user_id", "choice"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("projects.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    # 'running' | 'done' | 'failed'
    Column("status", String(16), nullable=False),
    Column("done", Integer, nullable=False, default=0),
    Column("total", Integer, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (SQLAlchemy's bare default is psycopg2, not installed)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, durable: bool = True) -> Engine:
    """An engine for `url` with the SQLite settings described in the module docstring.

    `durable=False` (SQLite): commits do not wait for the disk (`synchronous=NORMAL`). For writes
    that a power cut may lose but a killed process may not, like an item's first-shown time: the
    commit is in the WAL either way, and the next durable commit syncs that log, earlier commits
    included. It spares each annotate page view an fsync (about 2 ms here) under the one write lock.
    PostgreSQL ignores it: a second pool per worker would cost connections (and `max_connections`
    is 100 by default), and its commits wait for the WAL together (group commit).
    """
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend != "sqlite":
        return _server_engine(url)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        # Up to one connection per server worker thread; SQLite connections are cheap.
        pool_size=10,
        max_overflow=40,
        pool_timeout=60,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_on_connect(dbapi_connection, _record):
        # Driver-level autocommit, so that the "begin" hook below controls BEGIN (the recipe in
        # SQLAlchemy's pysqlite documentation, "Serializable isolation / Savepoints").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a vote acknowledged to the client survives power loss, not only a killed process;
        # votes arrive at human speed, so the extra fsync is affordable. NORMAL (no fsync at
        # commit; WAL stays consistent) only on the engine for non-durable writes, see above.
        cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_on_begin(connection):
        immediate = connection.get_execution_options().get("preftune_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _server_engine(url: str) -> Engine:
    """PostgreSQL: a pool that replaces connections the server closed, without `pool_pre_ping`'s
    round trip on every checkout (SQLAlchemy's "Dealing with Disconnects").

    - At checkout, a look at the socket without waiting: an idle connection has nothing to read,
      unless the server said goodbye (`pg_terminate_backend`, a restart, an idle timeout all send
      an error and close). Then the pool drops it and checks out another (`DisconnectionError`).
    - `pool_recycle`: no connection is kept longer than POOL_RECYCLE_SECONDS.
    - Optimistic, for what the look cannot see (the server gone mid-transaction): an error with a
      connection-ending SQLSTATE marks the connection as disconnected, so the pool drops it and
      every connection older than it; that request fails, the next ones get fresh connections.
    """
    engine = create_engine(url, pool_size=10, max_overflow=30, pool_recycle=POOL_RECYCLE_SECONDS)

    @event.listens_for(engine, "checkout")
    def _drop_if_closed_by_server(dbapi_connection, _record, _proxy):
        try:
            readable, _, _ = io_select.select([dbapi_connection.fileno()], [], [], 0)
        except (OSError, ValueError) as error:  # closed on our side already
            raise exc.DisconnectionError(f"connection unusable: {error}") from error
        if readable:
            raise exc.DisconnectionError("the server closed this connection while it was idle")

    @event.listens_for(engine, "handle_error")
    def _mark_disconnects(context):
        sqlstate = getattr(context.original_exception, "sqlstate", None) or ""
        if sqlstate.startswith(_DISCONNECT_SQLSTATES):
            context.is_disconnect = True

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"

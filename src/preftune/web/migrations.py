"""Schema versioning: a `schema_version` table and an ordered list of migration functions.

This is the documented equivalent of Alembic for a schema this small:

- A fresh database gets the current tables (`db.metadata`) and is stamped `SCHEMA_VERSION`.
- An existing database at version v runs `MIGRATIONS[v + 1]`, `MIGRATIONS[v + 2]`, ... up to
  `SCHEMA_VERSION`, each in its own transaction that also bumps the stamp, so a crash mid-upgrade
  leaves the database at the last version that completed.
- A database stamped newer than this code refuses to open rather than guess.

To change the schema: edit `db.py`, increment `SCHEMA_VERSION`, and add
`MIGRATIONS[new_version] = fn` where `fn(connection)` turns a database at the previous version into
the new one (for example `connection.exec_driver_sql("ALTER TABLE items ADD COLUMN notes TEXT")`).
Add a test that opens a database at the previous version and checks the new shape.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, insert, inspect, select, update

from preftune.web import db

SCHEMA_VERSION = 4


def _v2_links_and_unique_names(connection: Connection) -> None:
    """Login links that expire or are revoked, removable people, one name per project; AI
    suggestions (a project setting) and the model behind each response (the arena).

    Databases from before this version may hold two people of one name in a project (concurrent
    invites on PostgreSQL could create them): all but the first get their id appended, so the
    unique index can be built and nobody's votes change hands.
    """
    connection.exec_driver_sql("ALTER TABLE users ADD COLUMN token_expires_at FLOAT")
    connection.exec_driver_sql("ALTER TABLE users ADD COLUMN removed_at FLOAT")
    connection.exec_driver_sql("ALTER TABLE projects ADD COLUMN show_suggestions BOOLEAN NOT NULL DEFAULT '0'")
    connection.exec_driver_sql("ALTER TABLE items ADD COLUMN model_a VARCHAR(200)")
    connection.exec_driver_sql("ALTER TABLE items ADD COLUMN model_b VARCHAR(200)")
    users = db.users
    seen: set[tuple] = set()
    rows = connection.execute(select(users.c.id, users.c.project_id, users.c.name).order_by(users.c.id))
    for user_id, project_id, name in rows.all():
        if (project_id, name) in seen and project_id is not None:
            connection.execute(
                update(users).where(users.c.id == user_id).values(name=f"{name[:180]} (#{user_id})")
            )
        seen.add((project_id, name))
    connection.exec_driver_sql("CREATE UNIQUE INDEX uq_user_project_name ON users (project_id, name)")


def _v3_thumbs_projects(connection: Connection) -> None:
    """Project kinds: every existing project is pairwise; thumbs projects (one answer per item,
    thumbs up / down, for KTO) are new."""
    connection.exec_driver_sql("ALTER TABLE projects ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'pairwise'")


def _v4_votes_by_user(connection: Connection) -> None:
    """An index of votes by person: the annotate page counts a person's skips on every view, which
    read the whole votes table before (issue 18)."""
    connection.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_vote_user_choice ON votes (user_id, choice)")


# version -> function that upgrades a database from version - 1 to version.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _v2_links_and_unique_names,
    3: _v3_thumbs_projects,
    4: _v4_votes_by_user,
}


class SchemaError(RuntimeError):
    """The database cannot be used by this version of preftune (one-line message)."""


def current_version(engine: Engine) -> int | None:
    """The stamped version, or None for a database without preftune tables."""
    if not inspect(engine).has_table("schema_version"):
        return None
    with engine.connect() as connection:
        return connection.execute(select(db.schema_version.c.version)).scalar()


def migrate(engine: Engine) -> int:
    """Bring the database to `SCHEMA_VERSION` and return that version."""
    target = SCHEMA_VERSION
    found = current_version(engine)
    if found is None:
        with engine.connect().execution_options(preftune_write=True) as connection, connection.begin():
            db.metadata.create_all(connection)
            connection.execute(insert(db.schema_version).values(version=target))
        return target
    if found > target:
        raise SchemaError(
            f"database schema is version {found}, newer than this preftune ({target}); upgrade preftune"
        )
    for version in range(found + 1, target + 1):
        if version not in MIGRATIONS:
            raise SchemaError(f"no migration to schema version {version}")
        with engine.connect().execution_options(preftune_write=True) as connection, connection.begin():
            MIGRATIONS[version](connection)
            connection.execute(update(db.schema_version).values(version=version))
    return target

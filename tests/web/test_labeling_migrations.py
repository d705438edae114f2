"""Schema versioning: fresh databases are stamped, older ones upgrade in order, newer ones refuse."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from preftune.web import migrations
from preftune.web.db import make_engine
from preftune.web.store import Store


def test_fresh_database_is_created_and_reopens(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    first = Store(url)
    project_id = first.create_project("kept")
    first.close()
    again = Store(url)
    assert again.schema_version == migrations.SCHEMA_VERSION
    assert again.project(project_id)["name"] == "kept"
    with again.read() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    again.close()


def test_migrations_run_in_order_and_stamp_each_version(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    Store(url).close()
    ran = []

    now = migrations.SCHEMA_VERSION

    def add_notes(connection):
        ran.append(now + 1)
        connection.execute(text("ALTER TABLE items ADD COLUMN notes TEXT"))

    def add_index(connection):
        ran.append(now + 2)
        connection.execute(text("CREATE INDEX ix_items_notes ON items (notes)"))

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", now + 2)
    monkeypatch.setattr(migrations, "MIGRATIONS", {now + 1: add_notes, now + 2: add_index})
    engine = make_engine(url)
    assert migrations.migrate(engine) == now + 2 and ran == [now + 1, now + 2]
    assert "notes" in {c["name"] for c in inspect(engine).get_columns("items")}
    assert migrations.current_version(engine) == now + 2
    assert migrations.migrate(engine) == now + 2 and ran == [now + 1, now + 2]  # nothing left to do
    engine.dispose()


def test_a_failed_migration_leaves_the_last_good_version(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    Store(url).close()

    def broken(connection):
        connection.execute(text("ALTER TABLE items ADD COLUMN half TEXT"))
        raise RuntimeError("disk on fire")

    now = migrations.SCHEMA_VERSION
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", now + 1)
    monkeypatch.setattr(migrations, "MIGRATIONS", {now + 1: broken})
    engine = make_engine(url)
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrations.migrate(engine)
    assert migrations.current_version(engine) == now
    assert "half" not in {c["name"] for c in inspect(engine).get_columns("items")}  # rolled back
    engine.dispose()


def test_newer_database_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    store = Store(url)
    with store.write() as c:
        c.execute(text("UPDATE schema_version SET version = 99"))
    store.close()
    with pytest.raises(migrations.SchemaError, match="version 99, newer than this preftune"):
        Store(url)


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path):
    from preftune.web.store import StoreError

    with pytest.raises(StoreError) as error:
        Store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    assert (
        str(error.value)
        == f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}: cannot open the database (unable to open database file)"
    )
    with pytest.raises(StoreError, match=r"^nosuch://x: not a usable database URL"):
        Store("nosuch://x")


def test_version_1_database_gains_link_columns_and_unique_names(tmp_path):
    """A database as version 1 left it, two people of one name included, upgrades to version 2."""
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    store = Store(url)
    project_id = store.create_project("p")
    with store.write() as c:
        c.execute(text("DROP INDEX uq_user_project_name"))
        c.execute(text("ALTER TABLE users DROP COLUMN token_expires_at"))
        c.execute(text("ALTER TABLE users DROP COLUMN removed_at"))
        c.execute(text("ALTER TABLE projects DROP COLUMN show_suggestions"))
        c.execute(text("ALTER TABLE items DROP COLUMN model_a"))
        c.execute(text("ALTER TABLE items DROP COLUMN model_b"))
        c.execute(text("ALTER TABLE projects DROP COLUMN kind"))  # version 3
        for _ in range(2):
            c.execute(
                text("INSERT INTO users (name, role, project_id, created_at) VALUES ('ann', 'annotator', :p, 0)"),
                {"p": project_id},
            )
        c.execute(text("UPDATE schema_version SET version = 1"))
    store.close()
    upgraded = Store(url)
    assert upgraded.schema_version == migrations.SCHEMA_VERSION
    assert upgraded.project(project_id)["show_suggestions"] is False
    names = [u["name"] for u in upgraded.users(project_id)]
    assert names[0] == "ann" and names[1].startswith("ann (#") and len(set(names)) == 2
    from preftune.web.store import StoreError

    with pytest.raises(StoreError, match="'ann'\u2069 is already in this project"):
        upgraded.create_user("ann", "annotator", project_id)
    upgraded.close()


def test_a_version_3_database_gains_the_index_of_votes_by_person(tmp_path):
    url = f"sqlite:///{tmp_path / 'v3.db'}"
    store = Store(url)
    with store.write() as c:
        c.execute(text("DROP INDEX ix_vote_user_choice"))
        c.execute(text("UPDATE schema_version SET version = 3"))
    store.close()
    upgraded = Store(url)
    try:
        assert upgraded.schema_version == migrations.SCHEMA_VERSION == 4
        indexes = {index["name"] for index in inspect(upgraded.engine).get_indexes("votes")}
        assert "ix_vote_user_choice" in indexes
    finally:
        upgraded.close()

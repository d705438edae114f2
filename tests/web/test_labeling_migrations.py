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

    def add_notes(connection):
        ran.append(2)
        connection.execute(text("ALTER TABLE items ADD COLUMN notes TEXT"))

    def add_index(connection):
        ran.append(3)
        connection.execute(text("CREATE INDEX ix_items_notes ON items (notes)"))

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(migrations, "MIGRATIONS", {2: add_notes, 3: add_index})
    engine = make_engine(url)
    assert migrations.migrate(engine) == 3 and ran == [2, 3]
    assert "notes" in {c["name"] for c in inspect(engine).get_columns("items")}
    assert migrations.current_version(engine) == 3
    assert migrations.migrate(engine) == 3 and ran == [2, 3]  # nothing left to do
    engine.dispose()


def test_a_failed_migration_leaves_the_last_good_version(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    Store(url).close()

    def broken(connection):
        connection.execute(text("ALTER TABLE items ADD COLUMN half TEXT"))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(migrations, "MIGRATIONS", {2: broken})
    engine = make_engine(url)
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrations.migrate(engine)
    assert migrations.current_version(engine) == 1
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

"""SQLite's writers queue on `WriterLock` (across processes), and only page views skip the fsync."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from preftune.web.store import Store
from preftune.web.writer_lock import WriterLock, lock_path


def test_the_writer_lock_holds_across_open_files_of_one_path(tmp_path):
    # Two instances stand for two processes: each flocks through its own open file.
    path = lock_path(str(tmp_path / "x.db"))
    first, second = WriterLock(path), WriterLock(path)
    order = []

    def take_second():
        with second:
            order.append("second")

    with first:
        waiting = threading.Thread(target=take_second)
        waiting.start()
        time.sleep(0.2)
        order.append("first done")
    waiting.join(timeout=10)
    assert order == ["first done", "second"]
    first.close()
    second.close()


def test_no_lock_file_for_a_database_in_memory():
    assert lock_path(None) is None and lock_path(":memory:") is None


def test_only_the_light_engine_commits_without_fsync(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sync.db'}")
    try:
        with store.write() as c:
            durable = c.execute(text("PRAGMA synchronous")).scalar()
        with store.write(durable=False) as c:
            light = c.execute(text("PRAGMA synchronous")).scalar()
    finally:
        store.close()
    assert (durable, light) == (2, 1)  # FULL for votes, NORMAL for shown times
    assert (tmp_path / "sync.db-writer.lock").exists()

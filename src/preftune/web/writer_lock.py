"""SQLite's one writer, queued in the kernel: a thread lock plus an flock shared by the processes.

SQLite lets one transaction write at a time. Writers that find the lock taken wait in its busy
handler, which sleeps and retries (1, 2, 5, 10, ... up to 100 ms between tries): with several
server workers on one file, a writer in one process sleeps past the moment the other released
it, while that process's own threads take the lock in turn. Here every writer of every process
queues on an flock of a file beside the database instead; the kernel wakes the next one when it is
released, and frees it when its holder dies (kill -9 included). Threads of one process queue on a
thread lock first: an flock is held by an open file, which all threads of a process share.

Writers that do not take this lock (another program, an export run by hand) still meet SQLite's
busy timeout as before; the lock only orders the writers that use it.
"""

from __future__ import annotations

import os
import threading

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone
    fcntl = None


class WriterLock:
    """Context manager: held by one thread of one process at a time (per `path`)."""

    def __init__(self, path: str | None):
        # None (an in-memory database, or no fcntl): a thread lock only.
        self._path = path if fcntl is not None else None
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int | None:
        # Opened per process: a descriptor inherited through fork would share its flock.
        if self._path is not None and (self._fd is None or self._pid != os.getpid()):
            try:
                self._fd, self._pid = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
            except OSError:  # a read-only folder: fall back on SQLite's busy handler
                self._path = None
        return self._fd if self._path is not None else None

    def __enter__(self) -> WriterLock:
        self._threads.acquire()
        try:
            fd = self._file()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks with the GIL released
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        try:
            if self._fd is not None and self._path is not None and self._pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


def lock_path(database: str | None) -> str | None:
    """The lock file for a SQLite database file, or None for an in-memory one."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}-writer.lock"

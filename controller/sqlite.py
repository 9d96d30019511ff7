"""SQLite, the way both stores use it: one file in WAL mode on an
autocommit connection, write transactions that take the lock up front, and
sqlite errors converted once, into :class:`~controller.errors.StoreError`.

The agent's state (:mod:`controller.agent.state`) and the controller's store
(:mod:`controller.fleet.store`) open, write and fail through these three.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from .errors import from_sqlite_error

__all__ = ["BUSY_TIMEOUT_SECONDS", "connect", "converted", "write_transaction"]

# How long a writer waits for another process's lock before failing.
BUSY_TIMEOUT_SECONDS: Final = 5.0


@contextlib.contextmanager
def converted(what: str) -> Iterator[None]:
    """sqlite3 errors raised inside as a StoreError about ``what`` (which
    names the file and the operation)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise from_sqlite_error(exc, what) from exc


def connect(path: Path, *, readonly: bool = False, shared: bool = False) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode (created with its
    directory if missing), or read-only without creating anything.
    ``shared``: used from several threads (the caller holds a lock)."""
    with converted(f"{path}: open"):
        if readonly:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS,
                                   check_same_thread=not shared)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                             check_same_thread=not shared)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection: BEGIN IMMEDIATE
    (the writer takes the lock up front, never half-way through), COMMIT,
    or ROLLBACK on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

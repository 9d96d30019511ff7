"""SQLite, the way both stores use it: one file in WAL mode on an
autocommit connection, write transactions that take the lock up front, and
sqlite errors converted once, into :class:`~controller.errors.StoreError`.

The agent's state (:mod:`controller.agent.state`) and the controller's store
(:mod:`controller.fleet.store`) open, write and fail through these three.

**Modes.** A database holds every rule and the audit log: :func:`connect`
makes a missing directory 0700 and the database file 0600 (an existing file
is tightened to 0600; SQLite gives its ``-wal`` and ``-shm`` files the
database's mode). An existing directory is left as it is (it may be shared,
like ``/tmp``), but one that others can read is logged as a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from .errors import from_sqlite_error

__all__ = ["BUSY_TIMEOUT_SECONDS", "DB_MODE", "DIR_MODE", "connect", "converted", "write_transaction"]

LOGGER = logging.getLogger("breakwater.sqlite")
DB_MODE: Final = 0o600
"""A database file's mode: the owner's only."""
DIR_MODE: Final = 0o700
"""The mode of a state directory :func:`connect` creates."""

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
        _private_file(path)
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                             check_same_thread=not shared)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db


def _private_file(path: Path) -> None:
    """Make ``path``'s directory (0700) if missing, and ``path`` itself 0600."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(path.parent, DIR_MODE)  # mkdir's mode is masked by the umask
        elif path.parent.stat().st_mode & 0o077 and not path.parent.stat().st_mode & stat.S_ISVTX:
            LOGGER.warning("%s: others may read this state directory (mode %o); chmod 0700 it",
                           path.parent, stat.S_IMODE(path.parent.stat().st_mode),
                           extra={"event": "state_dir_open", "path": str(path.parent)})
        fd = os.open(path, os.O_CREAT | os.O_RDWR, DB_MODE)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != DB_MODE:
                os.fchmod(fd, DB_MODE)
        finally:
            os.close(fd)
    except OSError as exc:
        raise sqlite3.OperationalError(f"cannot create {path}: {exc.strerror or exc}") from exc


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

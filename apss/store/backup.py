"""Copies of the database file: SQLite's online backup API, checks on a copy, putting a copy in
place, and the lock that tells a restore a server is using the file.

These open their own short connections (`f(path, ...)`), next to a running server: the backup API
reads one consistent snapshot in a single step (a read transaction, which in WAL mode never waits
for the writer nor makes it wait), so a copy taken under load holds every committed transaction up
to one moment and nothing half-written.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

__all__ = ["ServingLock", "copy_database", "integrity_problem", "replace_database", "row_counts", "sealed_sample"]

# Tables whose row counts a backup reports and a restore shows (a quick "is it what I expect").
COUNTED_TABLES = ("merchants", "products", "orders", "payments", "refunds", "ledger_entries")


def _read_only(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None)


def copy_database(path: str, *, target: str) -> None:
    """Copy the live database at `path` into `target` (a new file) with the online backup API, in
    one step, then fsync it. The copy is a plain rollback-journal file (no -wal beside it)."""
    assert path != target
    assert not Path(target).exists(), f"{target} exists"
    src = _read_only(path)
    try:
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: the whole file from one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def integrity_problem(path: str) -> str | None:
    """None when `PRAGMA integrity_check` says ok and the foreign keys hold, else the first problem."""
    conn = _read_only(path)
    try:
        first = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if first != "ok":
            return f"integrity_check: {first}"
        broken = conn.execute("PRAGMA foreign_key_check").fetchone()
        if broken is not None:
            return f"foreign_key_check: a row of {broken[0]} points at a missing {broken[2]}"
    except sqlite3.DatabaseError as exc:
        return f"not a readable database: {exc}"
    finally:
        conn.close()
    return None


def row_counts(path: str) -> dict[str, int]:
    conn = _read_only(path)
    try:
        present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # Table names come from the constant above, never from input.
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in COUNTED_TABLES
                if table in present}
    finally:
        conn.close()


def sealed_sample(path: str) -> tuple[str, bytes] | None:
    """One sealed value of the copy and its context (a test merchant's webhook secret), to prove a
    data key opens the copy before it is restored; None when the copy seals nothing."""
    conn = _read_only(path)
    try:
        row = conn.execute("SELECT id, sandbox_webhook_secret_sealed FROM merchants "
                           "WHERE sandbox_webhook_secret_sealed IS NOT NULL LIMIT 1").fetchone()
    finally:
        conn.close()
    return None if row is None else (row[0], row[1])


def replace_database(path: str, *, target: str) -> None:
    """Put the checked copy at `path` in place of `target`: written beside it, fsynced, renamed over it,
    the old WAL and shared-memory files removed (the caller holds ServingLock.exclusive)."""
    staging = f"{target}.restoring"
    Path(staging).unlink(missing_ok=True)
    copy_database(path, target=staging)
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    os.replace(staging, target)
    directory = os.open(Path(target).resolve().parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class ServingLock:
    """`<database>.lock`: every server holds it shared while it runs (the kernel drops it when the
    process ends, however it ends); a restore takes it exclusively, so it refuses while any server
    uses the file, and a server does not start during a restore."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def _take(cls, database_path: str, mode: int) -> ServingLock | None:
        path = Path(f"{database_path}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    @classmethod
    def shared(cls, database_path: str) -> ServingLock | None:
        """For a server: None when a restore holds the file."""
        return cls._take(database_path, fcntl.LOCK_SH)

    @classmethod
    def exclusive(cls, database_path: str) -> ServingLock | None:
        """For a restore: None when a server runs on the file."""
        return cls._take(database_path, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

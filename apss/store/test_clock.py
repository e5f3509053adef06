"""The test clock's stored time (config clock.mode = "test"), and what a test-mode start must know
before anything else is built: the stored time and whether a live merchant exists."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from apss.store.db import Tx
from apss.store.migrate import is_postgresql

__all__ = ["StartState", "read_start_state", "save_now"]


class StartState:
    """Read once, synchronously, before the services (and their clock) are built."""

    def __init__(self, *, stored_now_ms: int | None, live_merchants: int) -> None:
        assert stored_now_ms is None or stored_now_ms >= 0
        assert live_merchants >= 0
        self.stored_now_ms = stored_now_ms
        self.live_merchants = live_merchants


_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
}


def read_start_state(path: str) -> StartState:
    """A database not created (or not migrated) yet has no stored time and no merchant. `path` is
    the SQLite file, or a PostgreSQL URL (database.target)."""
    if is_postgresql(path):
        import psycopg  # the `postgres` extra: only a PostgreSQL setup needs it

        with psycopg.connect(path, autocommit=True) as conn:
            return _start_state(conn, _TABLES["postgresql"])
    if not Path(path).exists():
        return StartState(stored_now_ms=None, live_merchants=0)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _start_state(conn, _TABLES["sqlite"])
    finally:
        conn.close()


def _start_state(conn, tables_sql: str) -> StartState:
    """The same reads on sqlite3's or psycopg's connection (their `execute` and `fetchone` agree)."""
    tables = {row[0] for row in conn.execute(tables_sql)}
    stored = None
    if "test_clock" in tables:
        row = conn.execute("SELECT now_ms FROM test_clock WHERE id = 1").fetchone()
        stored = row[0] if row else None
    live = 0
    if "merchants" in tables:
        live = conn.execute("SELECT count(*) FROM merchants WHERE mode = 'live'").fetchone()[0]
    return StartState(stored_now_ms=stored, live_merchants=live)


def save_now(tx: Tx, *, now_ms: int) -> None:
    """The clock never goes back, also not through a stale save (max with the stored time)."""
    assert now_ms >= 0
    tx.execute(
        "INSERT INTO test_clock (id, now_ms) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET now_ms = max(test_clock.now_ms, excluded.now_ms)",
        (now_ms,),
    )

"""FX rates: global, kept as history; per pair the latest `as_of_ms` (not in the future) wins."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = ["history", "insert_rates", "latest_rate_tx", "list_latest", "rate_exists_tx"]

_COLUMNS = "base, quote, rate, as_of_ms, source, created_at_ms"


def rate_exists_tx(tx: Tx, *, base: str, quote: str, as_of_ms: int) -> bool:
    return tx.one("SELECT 1 FROM fx_rates WHERE base = ? AND quote = ? AND as_of_ms = ?",
                  (base, quote, as_of_ms)) is not None


def insert_rates(tx: Tx, rows: list[dict]) -> None:
    """Store rates; a row with the same (base, quote, as_of_ms) as a stored one replaces it, so
    re-importing a file (or re-sending a request) changes nothing the second time."""
    assert all(row["base"] != row["quote"] for row in rows)
    tx.executemany(
        f"INSERT INTO fx_rates ({_COLUMNS}) VALUES (:base, :quote, :rate, :as_of_ms, :source, :created_at_ms)"
        " ON CONFLICT (base, quote, as_of_ms) DO UPDATE SET rate = excluded.rate, source = excluded.source,"
        " created_at_ms = excluded.created_at_ms",
        rows,
    )


def latest_rate_tx(tx: Tx, *, base: str, quote: str, as_of_max_ms: int) -> sqlite3.Row | None:
    """The pair's rate with the latest as_of at or before `as_of_max_ms` (a rate dated later is
    not yet in force), or None."""
    return tx.one(
        f"SELECT {_COLUMNS} FROM fx_rates WHERE base = ? AND quote = ? AND as_of_ms <= ?"
        " ORDER BY as_of_ms DESC LIMIT 1",
        (base, quote, as_of_max_ms),
    )


async def list_latest(db: Database) -> list[sqlite3.Row]:
    """The latest stored row of every pair (whatever its as_of), ordered by pair."""
    return await db.fetch_all(
        f"SELECT {_COLUMNS} FROM fx_rates AS r WHERE as_of_ms ="
        " (SELECT max(as_of_ms) FROM fx_rates WHERE base = r.base AND quote = r.quote)"
        " ORDER BY base, quote"
    )


async def history(db: Database, *, base: str, quote: str, limit: int, before_ms: int | None = None) -> list[sqlite3.Row]:
    """The pair's rates, newest as_of first; `before_ms` continues a previous page."""
    assert limit >= 1
    return await db.fetch_all(
        f"SELECT {_COLUMNS} FROM fx_rates WHERE base = ? AND quote = ? AND as_of_ms < ?"
        " ORDER BY as_of_ms DESC LIMIT ?",
        (base, quote, before_ms if before_ms is not None else 2**62, limit),
    )

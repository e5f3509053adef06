"""Admin dashboard sessions: SHA-256 digests of the cookie tokens, with expiry and the merchant
the admin looked at last."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "count_sessions_tx",
    "delete_expired",
    "delete_oldest",
    "delete_session",
    "fetch_session",
    "insert_session",
    "set_merchant",
    "touch_session",
]


def insert_session(tx: Tx, *, token_sha256: str, now_ms: int, expires_at_ms: int) -> None:
    tx.execute("INSERT INTO admin_sessions (token_sha256, merchant_id, created_at_ms, expires_at_ms) VALUES (?, NULL, ?, ?)",
               (token_sha256, now_ms, expires_at_ms))


async def fetch_session(db: Database, *, token_sha256: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM admin_sessions WHERE token_sha256 = ?", (token_sha256,))


def touch_session(tx: Tx, *, token_sha256: str, now_ms: int, expires_at_ms: int) -> bool:
    """Extend a session that has not expired; False if it is gone or expired."""
    cursor = tx.execute("UPDATE admin_sessions SET expires_at_ms = ? WHERE token_sha256 = ? AND expires_at_ms > ?",
                        (expires_at_ms, token_sha256, now_ms))
    return cursor.rowcount == 1


def set_merchant(tx: Tx, *, token_sha256: str, merchant_id: str, now_ms: int) -> bool:
    cursor = tx.execute("UPDATE admin_sessions SET merchant_id = ? WHERE token_sha256 = ? AND expires_at_ms > ?",
                        (merchant_id, token_sha256, now_ms))
    return cursor.rowcount == 1


def delete_session(tx: Tx, *, token_sha256: str) -> None:
    tx.execute("DELETE FROM admin_sessions WHERE token_sha256 = ?", (token_sha256,))


def delete_expired(tx: Tx, *, now_ms: int, limit: int) -> int:
    cursor = tx.execute("DELETE FROM admin_sessions WHERE token_sha256 IN (SELECT token_sha256 FROM admin_sessions"
                        " WHERE expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?)", (now_ms, limit))
    return cursor.rowcount


def count_sessions_tx(tx: Tx) -> int:
    return tx.one("SELECT count(*) AS n FROM admin_sessions")["n"]


def delete_oldest(tx: Tx, *, count: int) -> int:
    """The sessions that expire first go first (each use extends a session, so: the least recently used)."""
    cursor = tx.execute("DELETE FROM admin_sessions WHERE token_sha256 IN (SELECT token_sha256 FROM admin_sessions"
                        " ORDER BY expires_at_ms LIMIT ?)", (count,))
    return cursor.rowcount

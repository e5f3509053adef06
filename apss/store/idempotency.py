"""Idempotency keys: the key, a SHA-256 of the request, and the stored response."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx
from apss.store.privacy import ERASED_REQUEST_HASH

__all__ = ["ERASED_REQUEST_HASH", "finish_key", "get_key_tx", "insert_key", "prune_keys", "running_keys"]


def get_key_tx(tx: Tx, *, merchant_id: str, key: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM idempotency_keys WHERE merchant_id = ? AND key = ?", (merchant_id, key))


def insert_key(
    tx: Tx, *, merchant_id: str, key: str, request_hash: str, state: str, status: int | None,
    body: bytes | None, resume: str | None, now_ms: int,
) -> None:
    assert (state == "done") == (status is not None)
    tx.execute(
        "INSERT INTO idempotency_keys (merchant_id, key, request_hash, state, response_status, response_body,"
        " resume, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (merchant_id, key, request_hash, state, status, body, resume, now_ms),
    )


def finish_key(tx: Tx, *, merchant_id: str, key: str, status: int, body: bytes) -> None:
    cursor = tx.execute(
        "UPDATE idempotency_keys SET state = 'done', response_status = ?, response_body = ?, resume = NULL"
        " WHERE merchant_id = ? AND key = ? AND state = 'running'",
        (status, body, merchant_id, key),
    )
    assert cursor.rowcount == 1, "finished an idempotency key that was not running"


async def running_keys(db: Database, *, created_before_ms: int | None = None) -> list[sqlite3.Row]:
    """Keys still `running` (all of them, or those created before a time: the completer's)."""
    if created_before_ms is None:
        return await db.fetch_all("SELECT merchant_id, key, resume FROM idempotency_keys WHERE state = 'running'")
    return await db.fetch_all("SELECT merchant_id, key, resume FROM idempotency_keys WHERE state = 'running'"
                              " AND created_at_ms < ?", (created_before_ms,))


def prune_keys(tx: Tx, *, created_before_ms: int, limit: int) -> int:
    cursor = tx.execute(
        "DELETE FROM idempotency_keys WHERE (merchant_id, key) IN (SELECT merchant_id, key FROM idempotency_keys"
        " WHERE created_at_ms < ? AND state = 'done' LIMIT ?)",
        (created_before_ms, limit),
    )
    return cursor.rowcount

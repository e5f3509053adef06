"""The sandbox provider's own records: completed and closed payments, the refunds it executed, and
its outbox of signed callbacks."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "closed",
    "completion",
    "due_callbacks",
    "fetch_closed",
    "fetch_completion",
    "fetch_refund",
    "insert_callback",
    "insert_closed",
    "insert_completion",
    "insert_refund",
    "mark_attempt",
    "next_callback_ms",
    "refund",
]


def completion(tx: Tx, *, payment_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM sandbox_payments WHERE payment_id = ?", (payment_id,))


async def fetch_completion(db: Database, *, payment_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM sandbox_payments WHERE payment_id = ?", (payment_id,))


def insert_completion(tx: Tx, *, payment_id: str, merchant_id: str, outcome: str, failure_code: str | None, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO sandbox_payments (payment_id, merchant_id, outcome, failure_code, completed_at_ms) VALUES (?, ?, ?, ?, ?)",
        (payment_id, merchant_id, outcome, failure_code, now_ms),
    )


def insert_callback(tx: Tx, *, event_id: str, merchant_id: str, body: bytes, deliver_at_ms: int) -> None:
    tx.execute(
        "INSERT INTO sandbox_callbacks (event_id, merchant_id, body, deliver_at_ms) VALUES (?, ?, ?, ?)",
        (event_id, merchant_id, body, deliver_at_ms),
    )


async def due_callbacks(db: Database, *, now_ms: int, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT seq, event_id, merchant_id, body, attempts FROM sandbox_callbacks"
        " WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL AND deliver_at_ms <= ? ORDER BY deliver_at_ms LIMIT ?",
        (now_ms, limit),
    )


async def next_callback_ms(db: Database) -> int | None:
    """When the next callback waiting to be sent is due (the sender job's due time)."""
    row = await db.fetch_one(
        "SELECT deliver_at_ms AS at_ms FROM sandbox_callbacks WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL"
        " ORDER BY deliver_at_ms LIMIT 1"
    )
    return row["at_ms"] if row else None


def mark_attempt(tx: Tx, *, seq: int, delivered: bool, error: str | None, retry_at_ms: int | None, now_ms: int) -> None:
    if delivered:
        tx.execute("UPDATE sandbox_callbacks SET attempts = attempts + 1, delivered_at_ms = ?, last_error = NULL WHERE seq = ?", (now_ms, seq))
    elif retry_at_ms is None:
        tx.execute("UPDATE sandbox_callbacks SET attempts = attempts + 1, gave_up_at_ms = ?, last_error = ? WHERE seq = ?", (now_ms, error, seq))
    else:
        tx.execute("UPDATE sandbox_callbacks SET attempts = attempts + 1, deliver_at_ms = ?, last_error = ? WHERE seq = ?", (retry_at_ms, error, seq))


def closed(tx: Tx, *, payment_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM sandbox_closed WHERE payment_id = ?", (payment_id,))


async def fetch_closed(db: Database, *, payment_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM sandbox_closed WHERE payment_id = ?", (payment_id,))


def insert_closed(tx: Tx, *, payment_id: str, merchant_id: str, now_ms: int) -> None:
    tx.execute("INSERT INTO sandbox_closed (payment_id, merchant_id, closed_at_ms) VALUES (?, ?, ?)",
               (payment_id, merchant_id, now_ms))


def refund(tx: Tx, *, refund_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM sandbox_refunds WHERE refund_id = ?", (refund_id,))


async def fetch_refund(db: Database, *, refund_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM sandbox_refunds WHERE refund_id = ?", (refund_id,))


def insert_refund(tx: Tx, *, refund_id: str, payment_id: str, provider_refund_ref: str, amount: int, currency: str,
                  status: str, failure_code: str | None, now_ms: int) -> None:
    assert amount > 0 and status in ("succeeded", "failed")
    tx.execute(
        "INSERT INTO sandbox_refunds (refund_id, payment_id, provider_refund_ref, amount, currency, status, failure_code,"
        " created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (refund_id, payment_id, provider_refund_ref, amount, currency, status, failure_code, now_ms),
    )

"""Refunds."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "fetch_refund",
    "finish_refund",
    "get_refund_tx",
    "insert_refund",
    "list_for_order",
    "over_refunds_tx",
    "refund_by_provider_ref",
    "refunded_total",
    "set_provider_ref",
    "pending_due",
    "claim_pending_due",
    "record_check",
    "queued",
    "dequeue",
    "next_send_ms",
    "record_send",
    "requeue",
]


def insert_refund(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO refunds (id, merchant_id, order_id, payment_id, amount, currency, status, reason, created_at_ms,"
        " updated_at_ms, queued) VALUES (:id, :merchant_id, :order_id, :payment_id, :amount, :currency, :status, :reason,"
        " :created_at_ms, :created_at_ms, :queued)",
        {"queued": 0, **row},
    )


def get_refund_tx(tx: Tx, *, refund_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM refunds WHERE id = ?", (refund_id,))


def refund_by_provider_ref(tx: Tx, *, provider_ref: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM refunds WHERE provider_refund_ref = ?", (provider_ref,))


async def fetch_refund(db: Database, *, refund_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM refunds WHERE id = ?", (refund_id,))


async def list_for_order(db: Database, *, merchant_id: str, order_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM refunds WHERE merchant_id = ? AND order_id = ? ORDER BY id", (merchant_id, order_id))


def refunded_total(tx: Tx, *, payment_id: str, statuses: tuple[str, ...]) -> int:
    """What the payment's refunds in `statuses` took back from its capture. A chargeback whose
    dispute was won is not counted: its reversal gave the money back, so the capture covers
    other refunds again."""
    marks = ", ".join("?" * len(statuses))
    row = tx.one("SELECT coalesce(sum(r.amount), 0) AS total FROM refunds r"
                 f" WHERE r.payment_id = ? AND r.status IN ({marks}) AND NOT (r.reason = 'chargeback' AND EXISTS ("
                 "SELECT 1 FROM disputes d WHERE d.order_id = r.order_id AND d.refund_id = r.id AND d.status = 'won'))",
                 (payment_id, *statuses))
    return row["total"]


def over_refunds_tx(tx: Tx, *, payment_id: str) -> list[sqlite3.Row]:
    """The payment's succeeded refunds (chargebacks aside) with a part booked beyond its capture
    (their `<id>:over` ledger transaction), oldest first: the refund's id, that part (`over_amount`, what
    it took from clearing) and whether it was covered again since (`covered`: its
    `<id>:over:covered` transaction, services/refunds `cover_over_refunds`)."""
    return tx.all(
        "SELECT r.id, sum(e.credit) - sum(e.debit) AS over_amount, EXISTS (SELECT 1 FROM ledger_transactions c"
        "  WHERE c.kind = 'refund' AND c.reference = r.id || ':over:covered') AS covered"
        " FROM refunds r JOIN ledger_transactions t ON t.kind = 'refund' AND t.reference = r.id || ':over'"
        " JOIN ledger_entries e ON e.transaction_id = t.id AND substr(e.account, 1, 18) = 'provider_clearing:'"
        " WHERE r.payment_id = ? AND r.status = 'succeeded' AND coalesce(r.reason, '') <> 'chargeback'"
        " GROUP BY r.id, r.created_at_ms ORDER BY r.created_at_ms, r.id", (payment_id,))


def set_provider_ref(tx: Tx, *, refund_id: str, provider_ref: str) -> None:
    tx.execute("UPDATE refunds SET provider_refund_ref = ? WHERE id = ?", (provider_ref, refund_id))


def finish_refund(tx: Tx, *, refund_id: str, from_status: str, status: str, failure_code: str | None,
                  clawback: str | None, now_ms: int) -> bool:
    """The guarded status write (`... AND status = :from`); False when the refund moved meanwhile."""
    cursor = tx.execute(
        "UPDATE refunds SET status = ?, failure_code = ?, clawback = coalesce(?, clawback), updated_at_ms = ?,"
        " next_check_at_ms = NULL, queued = 0, next_send_at_ms = NULL WHERE id = ? AND status = ?",
        (status, failure_code, clawback, now_ms, refund_id, from_status),
    )
    assert cursor.rowcount <= 1
    return cursor.rowcount == 1


_PENDING_DUE = (
    "SELECT r.*, p.channel, p.provider_ref FROM refunds r JOIN payments p ON p.id = r.payment_id"
    " WHERE r.status = 'pending' AND r.queued = 0 AND coalesce(r.next_check_at_ms, r.created_at_ms + ?) <= ?"
    " AND r.checks_done >= 0"
)


async def pending_due(db: Database, *, now_ms: int, first_check_ms: int, limit: int) -> list[sqlite3.Row]:
    """Pending refunds sent to their provider whose next status query is due (the janitor)."""
    return await db.fetch_all(f"{_PENDING_DUE} ORDER BY r.created_at_ms LIMIT ?", (first_check_ms, now_ms, limit))


def claim_pending_due(tx: Tx, *, now_ms: int, first_check_ms: int, limit: int, owner: str,
                      claimed_until_ms: int) -> list[sqlite3.Row]:
    """PostgreSQL (several instances): `pending_due` without the refunds another janitor holds,
    claimed for `owner` (locked rows are skipped, not waited for); `record_check` ends the claim."""
    assert tx.dialect == "postgresql", "SQLite's one writer needs no claims"
    rows = tx.all(f"{_PENDING_DUE} AND (r.claimed_until_ms IS NULL OR r.claimed_until_ms <= ? OR r.claimed_by = ?)"
                  " ORDER BY r.created_at_ms LIMIT ? FOR UPDATE OF r SKIP LOCKED",
                  (first_check_ms, now_ms, now_ms, owner, limit))
    if rows:
        tx.executemany("UPDATE refunds SET claimed_by = ?, claimed_until_ms = ? WHERE id = ?",
                       [(owner, claimed_until_ms, row["id"]) for row in rows])
    return rows


def record_check(tx: Tx, *, refund_id: str, checks_done: int, next_check_at_ms: int | None) -> None:
    """`checks_done = -1` marks a refund the janitor gave up on (an alert was raised)."""
    tx.execute("UPDATE refunds SET checks_done = ?, next_check_at_ms = ?, claimed_by = NULL, claimed_until_ms = NULL"
               " WHERE id = ?", (checks_done, next_check_at_ms, refund_id))


async def queued(db: Database, *, now_ms: int, limit: int) -> list[sqlite3.Row]:
    """Refunds waiting to be sent whose send is due: the ones APSS decided by itself (a late
    payment it cannot accept), and the ones to send again (never got through, or unknown)."""
    return await db.fetch_all(
        "SELECT id, merchant_id FROM refunds WHERE queued = 1 AND status = 'pending' AND coalesce(next_send_at_ms, 0) <= ?"
        " ORDER BY created_at_ms LIMIT ?",
        (now_ms, limit),
    )


async def next_send_ms(db: Database) -> int | None:
    """When the next queued refund is due (the refund sender's due time in a test-clock advance)."""
    row = await db.fetch_one(
        "SELECT min(coalesce(next_send_at_ms, created_at_ms)) AS due FROM refunds WHERE queued = 1 AND status = 'pending'")
    return row["due"] if row else None


def dequeue(tx: Tx, *, refund_id: str) -> bool:
    return tx.execute("UPDATE refunds SET queued = 0 WHERE id = ? AND queued = 1", (refund_id,)).rowcount == 1


def record_send(tx: Tx, *, refund_id: str, maybe_sent: bool) -> int:
    """Count one send of the refund to its provider; returns the sends so far. `maybe_sent` (the
    outcome was not a connection that never got through) sticks once set."""
    row = tx.one("UPDATE refunds SET send_attempts = send_attempts + 1, maybe_sent = max(maybe_sent, ?) WHERE id = ?"
                 " RETURNING send_attempts", (int(maybe_sent), refund_id))
    return row["send_attempts"]


def requeue(tx: Tx, *, refund_id: str, next_send_at_ms: int, now_ms: int) -> bool:
    """Queue a still-pending refund to be sent again at `next_send_at_ms` (the guarded write)."""
    return tx.execute("UPDATE refunds SET queued = 1, next_send_at_ms = ?, updated_at_ms = ? WHERE id = ? AND status = 'pending'",
                      (next_send_at_ms, now_ms, refund_id)).rowcount == 1

"""Settlement's SQL: schedules with their markers, batches, their lines, and the ledger activity
of a period (read inside the write transaction that settles it, so the batch and the marker agree)."""

from __future__ import annotations

import sqlite3
from typing import Any

from apss.store.db import Database, Tx

__all__ = [
    "advance_markers",
    "carried_open",
    "fetch_lines",
    "fetch_schedule",
    "fetch_settlement",
    "get_schedule",
    "get_settlement",
    "insert_lines",
    "insert_settlement",
    "list_settlements",
    "mark_carried_into",
    "mark_paid",
    "mark_reserve_released",
    "merchant_created_at_ms",
    "period_activity",
    "reserves_due",
    "scheduled_merchants",
    "settlement_lines_tx",
    "upsert_schedule",
]

_ACTIVITY_KINDS = ("payment_captured", "refund", "chargeback", "adjustment")
_SCHEDULE_FIELDS = ("cycle", "weekday", "t_plus_days", "cutoff_time", "timezone", "minimum_payout", "reserve_bps",
                    "reserve_hold_days", "last_cutoff_at_ms", "settled_through_ms", "updated_at_ms")
_SETTLEMENT_FIELDS = ("id", "merchant_id", "currency", "period_start_ms", "period_end_ms", "cutoff_at_ms", "status",
                      "gross", "refunds", "chargebacks", "fees", "commission", "partner_shares", "reserve_held",
                      "reserve_released", "carried_in", "net_payable", "reserve_release_at_ms", "created_at_ms")


# -- schedules --------------------------------------------------------------------------------
def get_schedule(tx: Tx, *, merchant_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM settlement_schedules WHERE merchant_id = ?", (merchant_id,))


async def fetch_schedule(db: Database, *, merchant_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM settlement_schedules WHERE merchant_id = ?", (merchant_id,))


def merchant_created_at_ms(tx: Tx, *, merchant_id: str) -> int | None:
    row = tx.one("SELECT created_at_ms FROM merchants WHERE id = ?", (merchant_id,))
    return row["created_at_ms"] if row else None


def upsert_schedule(tx: Tx, *, merchant_id: str, fields: dict[str, Any]) -> None:
    """Insert or replace the schedule's settings and markers (every field is given)."""
    assert set(fields) == set(_SCHEDULE_FIELDS), set(fields) ^ set(_SCHEDULE_FIELDS)
    columns = ", ".join(_SCHEDULE_FIELDS)
    updates = ", ".join(f"{name} = excluded.{name}" for name in _SCHEDULE_FIELDS)
    tx.execute(
        f"INSERT INTO settlement_schedules (merchant_id, {columns}) VALUES (?, {', '.join('?' * len(_SCHEDULE_FIELDS))})"
        f" ON CONFLICT (merchant_id) DO UPDATE SET {updates}",
        (merchant_id, *(fields[name] for name in _SCHEDULE_FIELDS)),
    )


async def scheduled_merchants(db: Database, *, limit: int) -> list[sqlite3.Row]:
    """Schedules the job settles (every cycle but manual)."""
    return await db.fetch_all(
        "SELECT * FROM settlement_schedules WHERE cycle <> 'manual' ORDER BY merchant_id LIMIT ?", (limit,))


def advance_markers(tx: Tx, *, merchant_id: str, last_cutoff_at_ms: int, settled_through_ms: int) -> None:
    """Markers only move forward (a run that lost a race changes nothing)."""
    cursor = tx.execute(
        "UPDATE settlement_schedules SET last_cutoff_at_ms = ?, settled_through_ms = ?"
        " WHERE merchant_id = ? AND last_cutoff_at_ms <= ? AND settled_through_ms <= ?",
        (last_cutoff_at_ms, settled_through_ms, merchant_id, last_cutoff_at_ms, settled_through_ms),
    )
    assert cursor.rowcount == 1, f"settlement markers of {merchant_id} would move backwards"


# -- the ledger activity of a period ------------------------------------------------------------
def period_activity(tx: Tx, *, merchant_id: str, from_ms: int, to_ms: int) -> list[sqlite3.Row]:
    """Entries of the merchant's payment, refund, chargeback and adjustment transactions in
    [from, to), in posting order, with the order each belongs to."""
    return tx.all(
        "SELECT t.id AS transaction_id, t.kind, t.reference, t.created_at_ms,"
        " coalesce(p.order_id, r.order_id) AS order_id, e.account, e.currency, e.debit, e.credit"
        " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id"
        " LEFT JOIN payments p ON t.kind = 'payment_captured' AND p.id = t.reference"
        " LEFT JOIN refunds r ON t.kind IN ('refund', 'chargeback') AND r.id = t.reference"
        f" WHERE t.merchant_id = ? AND t.kind IN ({', '.join('?' * len(_ACTIVITY_KINDS))})"
        " AND t.created_at_ms >= ? AND t.created_at_ms < ?"
        " ORDER BY t.created_at_ms, t.id, e.seq",
        (merchant_id, *_ACTIVITY_KINDS, from_ms, to_ms),
    )


def reserves_due(tx: Tx, *, merchant_id: str, at_ms: int) -> list[sqlite3.Row]:
    """The reserve-hold lines of batches whose reserve is due back at `at_ms` and not yet released."""
    return tx.all(
        "SELECT s.id AS settlement_id, s.currency, s.reserve_release_at_ms, l.channel, l.net"
        " FROM settlements s JOIN settlement_lines l ON l.settlement_id = s.id AND l.kind = 'reserve_hold'"
        " WHERE s.merchant_id = ? AND s.reserve_held > 0 AND s.reserve_released_by IS NULL"
        " AND s.reserve_release_at_ms <= ? ORDER BY s.id, l.line",
        (merchant_id, at_ms),
    )


def carried_open(tx: Tx, *, merchant_id: str) -> list[sqlite3.Row]:
    """Carried batches not yet taken over, with their net per channel."""
    return tx.all(
        "SELECT s.id AS settlement_id, s.currency, s.period_end_ms, l.channel, sum(l.net) AS net"
        " FROM settlements s JOIN settlement_lines l ON l.settlement_id = s.id"
        " WHERE s.merchant_id = ? AND s.status = 'carried' AND s.carried_into IS NULL"
        " GROUP BY s.id, l.channel ORDER BY s.id, l.channel",
        (merchant_id,),
    )


# -- batches -------------------------------------------------------------------------------------
def insert_settlement(tx: Tx, row: dict[str, Any]) -> None:
    assert set(row) == set(_SETTLEMENT_FIELDS), set(row) ^ set(_SETTLEMENT_FIELDS)
    tx.execute(
        f"INSERT INTO settlements ({', '.join(_SETTLEMENT_FIELDS)}) VALUES ({', '.join('?' * len(_SETTLEMENT_FIELDS))})",
        tuple(row[name] for name in _SETTLEMENT_FIELDS),
    )


def insert_lines(tx: Tx, rows: list[tuple]) -> None:
    """Rows of (settlement_id, line, kind, reference, order_id, channel, amount, fee, commission,
    partner_shares, net, occurred_at_ms)."""
    tx.executemany(
        "INSERT INTO settlement_lines (settlement_id, line, kind, reference, order_id, channel, amount, fee, commission,"
        " partner_shares, net, occurred_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def mark_reserve_released(tx: Tx, *, settlement_ids: list[str], released_by: str) -> None:
    for settlement_id in settlement_ids:
        cursor = tx.execute("UPDATE settlements SET reserve_released_by = ? WHERE id = ? AND reserve_released_by IS NULL",
                            (released_by, settlement_id))
        assert cursor.rowcount == 1, f"reserve of {settlement_id} released twice"


def mark_carried_into(tx: Tx, *, settlement_ids: list[str], carried_into: str) -> None:
    for settlement_id in settlement_ids:
        cursor = tx.execute("UPDATE settlements SET carried_into = ? WHERE id = ? AND status = 'carried'"
                            " AND carried_into IS NULL", (carried_into, settlement_id))
        assert cursor.rowcount == 1, f"carried batch {settlement_id} taken over twice"


def get_settlement(tx: Tx, *, settlement_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM settlements WHERE id = ?", (settlement_id,))


def settlement_lines_tx(tx: Tx, *, settlement_id: str) -> list[sqlite3.Row]:
    return tx.all("SELECT * FROM settlement_lines WHERE settlement_id = ? ORDER BY line", (settlement_id,))


def mark_paid(tx: Tx, *, settlement_id: str, payout_reference: str, now_ms: int) -> bool:
    """pending -> paid; False when the batch is not pending (paid already, or carried)."""
    cursor = tx.execute(
        "UPDATE settlements SET status = 'paid', payout_reference = ?, paid_at_ms = ? WHERE id = ? AND status = 'pending'",
        (payout_reference, now_ms, settlement_id),
    )
    return cursor.rowcount == 1


async def fetch_settlement(db: Database, *, settlement_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM settlements WHERE id = ?", (settlement_id,))


async def fetch_lines(db: Database, *, settlement_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM settlement_lines WHERE settlement_id = ? ORDER BY line", (settlement_id,))


async def list_settlements(db: Database, *, merchant_id: str, after_id: str | None, limit: int, status: str | None,
                           currency: str | None) -> list[sqlite3.Row]:
    """Newest first; `after_id` is the last id of the previous page."""
    return await db.fetch_all(
        "SELECT * FROM settlements WHERE merchant_id = ? AND (? IS NULL OR id < ?) AND (? IS NULL OR status = ?)"
        " AND (? IS NULL OR currency = ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, status, status, currency, currency, limit),
    )

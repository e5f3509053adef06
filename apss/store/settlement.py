"""Settlement's SQL: schedules with their markers, batches, their lines, and the ledger activity
of a period (read inside the write transaction that settles it, so the batch and the marker agree)."""

from __future__ import annotations

import sqlite3
from typing import Any

from apss.domain.settlement import ACTIVITY_FAMILIES
from apss.store.db import Database, Tx

__all__ = [
    "activity_chunk",
    "add_to_draft",
    "advance_markers",
    "begin_settling",
    "carried_open",
    "complete_draft",
    "draft",
    "drafts",
    "fetch_lines",
    "fetch_schedule",
    "fetch_settlement",
    "get_schedule_tx",
    "get_settlement_tx",
    "insert_lines",
    "insert_settlement",
    "line_count",
    "made_at_cutoff",
    "list_settlements",
    "mark_carried_into",
    "mark_paid",
    "mark_reserve_released",
    "merchant_created_at_ms",
    "move_settling_cursor",
    "reserves_due",
    "scheduled_merchants",
    "settlement_lines_tx",
    "upsert_schedule",
]

# A won dispute's `chargeback_reversed` settles as a chargeback line of the opposite sign.
_ACTIVITY_KINDS = ("payment_captured", "refund", "chargeback", "chargeback_reversed", "adjustment")
_SCHEDULE_FIELDS = ("cycle", "weekday", "t_plus_days", "cutoff_time", "timezone", "minimum_payout", "reserve_bps",
                    "reserve_hold_days", "last_cutoff_at_ms", "settled_through_ms", "updated_at_ms")
_SETTLEMENT_FIELDS = ("id", "merchant_id", "currency", "period_start_ms", "period_end_ms", "cutoff_at_ms", "status",
                      "gross", "refunds", "chargebacks", "fees", "commission", "partner_shares", "reserve_held",
                      "reserve_released", "carried_in", "net_payable", "reserve_release_at_ms", "created_at_ms", "complete",
                      "gross_by_channel")


# -- schedules --------------------------------------------------------------------------------
def get_schedule_tx(tx: Tx, *, merchant_id: str) -> sqlite3.Row | None:
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
    """Markers only move forward (a run that lost a race changes nothing); the cut-off is settled,
    so no chunked run is in progress any more."""
    cursor = tx.execute(
        "UPDATE settlement_schedules SET last_cutoff_at_ms = ?, settled_through_ms = ?, settling_cutoff_at_ms = NULL,"
        " settling_after_ms = NULL, settling_after_id = NULL"
        " WHERE merchant_id = ? AND last_cutoff_at_ms <= ? AND settled_through_ms <= ?",
        (last_cutoff_at_ms, settled_through_ms, merchant_id, last_cutoff_at_ms, settled_through_ms),
    )
    assert cursor.rowcount == 1, f"settlement markers of {merchant_id} would move backwards"


# -- the ledger activity of a period, in chunks ------------------------------------------------
def _family_sum(family: str) -> str:
    return f"sum(CASE WHEN substr(e.account, 1, {len(family) + 1}) = '{family}:' THEN e.debit - e.credit ELSE 0 END) AS {family}"


# The refund a refund-like transaction is about: its reference, or the part before the first ':'
# (`<refund id>:over`, the part beyond the capture; `<refund id>:over:covered`, its cover).
_REFUND_OF_REFERENCE = ("(CASE WHEN instr(t.reference, ':') > 0 THEN substr(t.reference, 1, instr(t.reference, ':') - 1)"
                        " ELSE t.reference END)")
_CHANNEL_ACCOUNT = ("min(CASE WHEN substr(e.account, 1, 18) = 'provider_clearing:' OR substr(e.account, 1, 13) = 'fees_expense:'"
                    " THEN e.account END) AS channel_account")


def activity_chunk(tx: Tx, *, merchant_id: str, from_ms: int, to_ms: int, after_ms: int, after_id: str,
                   limit: int) -> list[sqlite3.Row]:
    """The merchant's next `limit` payment, refund, chargeback and adjustment transactions in
    [from, to) after (after_ms, after_id), in posting order, with their orders: one row per
    transaction and currency, holding the sum of (debit - credit) of its entries per account family
    (ACTIVITY_FAMILIES) and one account that names its channel."""
    assert limit >= 1
    # The index range starts at the cursor, not at the period's start: `(created_at_ms, id) > (?, ?)`
    # alone only filters, and every chunk would walk the period's transactions before it again.
    seek_ms = max(from_ms, after_ms)
    return tx.all(
        "WITH chosen AS (SELECT id, kind, reference, created_at_ms FROM ledger_transactions"
        f" WHERE merchant_id = ? AND kind IN ({', '.join('?' * len(_ACTIVITY_KINDS))})"
        " AND created_at_ms >= ? AND created_at_ms < ? AND (created_at_ms, id) > (?, ?)"
        " ORDER BY created_at_ms, id LIMIT ?)"
        " SELECT t.id AS transaction_id, t.kind, t.reference, t.created_at_ms,"
        " coalesce(p.order_id, r.order_id) AS order_id, e.currency,"
        f" {', '.join(_family_sum(f) for f in ACTIVITY_FAMILIES)}, {_CHANNEL_ACCOUNT}, min(e.seq) AS first_seq"
        " FROM chosen t JOIN ledger_entries e ON e.transaction_id = t.id"
        " LEFT JOIN payments p ON t.kind = 'payment_captured' AND p.id = t.reference"
        f" LEFT JOIN refunds r ON t.kind IN ('refund', 'chargeback', 'chargeback_reversed') AND r.id = {_REFUND_OF_REFERENCE}"
        " GROUP BY t.id, t.kind, t.reference, t.created_at_ms, p.order_id, r.order_id, e.currency"
        " ORDER BY t.created_at_ms, t.id, first_seq",
        (merchant_id, *_ACTIVITY_KINDS, seek_ms, to_ms, after_ms, after_id, limit),
    )


def begin_settling(tx: Tx, *, merchant_id: str, cutoff_ms: int, after_ms: int) -> None:
    cursor = tx.execute(
        "UPDATE settlement_schedules SET settling_cutoff_at_ms = ?, settling_after_ms = ?, settling_after_id = ''"
        " WHERE merchant_id = ? AND settling_cutoff_at_ms IS NULL", (cutoff_ms, after_ms, merchant_id))
    assert cursor.rowcount == 1, f"{merchant_id} is settling another cut-off already"


def move_settling_cursor(tx: Tx, *, merchant_id: str, cutoff_ms: int, after_ms: int, after_id: str) -> None:
    """The last ledger transaction taken: the next chunk goes on after it."""
    cursor = tx.execute(
        "UPDATE settlement_schedules SET settling_after_ms = ?, settling_after_id = ?"
        " WHERE merchant_id = ? AND settling_cutoff_at_ms = ? AND (settling_after_ms, settling_after_id) < (?, ?)",
        (after_ms, after_id, merchant_id, cutoff_ms, after_ms, after_id))
    assert cursor.rowcount == 1, f"settlement cursor of {merchant_id} would not move forward"


def reserves_due(tx: Tx, *, merchant_id: str, at_ms: int) -> list[sqlite3.Row]:
    """The reserve-hold lines of batches whose reserve is due back at `at_ms` and not yet released."""
    return tx.all(
        "SELECT s.id AS settlement_id, s.currency, s.reserve_release_at_ms, l.channel, l.net"
        " FROM settlements s JOIN settlement_lines l ON l.settlement_id = s.id AND l.kind = 'reserve_hold'"
        " WHERE s.merchant_id = ? AND s.complete = 1 AND s.reserve_held > 0 AND s.reserve_released_by IS NULL"
        " AND s.reserve_release_at_ms <= ? ORDER BY s.id, l.line",
        (merchant_id, at_ms),
    )


def carried_open(tx: Tx, *, merchant_id: str) -> list[sqlite3.Row]:
    """Carried batches not yet taken over, with their net per channel."""
    return tx.all(
        "SELECT s.id AS settlement_id, s.currency, s.period_end_ms, l.channel, sum(l.net) AS net"
        " FROM settlements s JOIN settlement_lines l ON l.settlement_id = s.id"
        " WHERE s.merchant_id = ? AND s.complete = 1 AND s.status = 'carried' AND s.carried_into IS NULL"
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


def draft(tx: Tx, *, merchant_id: str, currency: str, period_end_ms: int) -> sqlite3.Row | None:
    """The batch of (merchant, currency, period) still being built, if any."""
    return tx.one("SELECT * FROM settlements WHERE merchant_id = ? AND currency = ? AND period_end_ms = ? AND complete = 0",
                  (merchant_id, currency, period_end_ms))


def drafts(tx: Tx, *, merchant_id: str, period_end_ms: int) -> list[sqlite3.Row]:
    return tx.all("SELECT * FROM settlements WHERE merchant_id = ? AND period_end_ms = ? AND complete = 0"
                  " ORDER BY currency", (merchant_id, period_end_ms))


def made_at_cutoff(tx: Tx, *, merchant_id: str, cutoff_ms: int) -> list[str]:
    """The complete batches one cut-off made (what a manual run answers), by currency."""
    rows = tx.all("SELECT id FROM settlements WHERE merchant_id = ? AND cutoff_at_ms = ? AND complete = 1"
                  " ORDER BY currency", (merchant_id, cutoff_ms))
    return [row["id"] for row in rows]


def line_count(tx: Tx, *, settlement_id: str) -> int:
    """Lines are numbered 1..n: the last number is the count, read from the primary key's end (a
    count(*) walked every line, once per chunk: quadratic in the batch's size)."""
    return tx.one("SELECT coalesce(max(line), 0) AS n FROM settlement_lines WHERE settlement_id = ?", (settlement_id,))["n"]


_TOTALS = ("gross", "refunds", "chargebacks", "fees", "commission", "partner_shares", "reserve_held",
           "reserve_released", "carried_in", "net_payable")


def add_to_draft(tx: Tx, *, settlement_id: str, totals: dict[str, int], gross_by_channel: str) -> None:
    """Add a chunk's totals to the batch being built (totals are sums over lines)."""
    assert set(totals) == set(_TOTALS), set(totals) ^ set(_TOTALS)
    cursor = tx.execute(
        f"UPDATE settlements SET {', '.join(f'{name} = {name} + ?' for name in _TOTALS)}, gross_by_channel = ?"
        " WHERE id = ? AND complete = 0", (*(totals[name] for name in _TOTALS), gross_by_channel, settlement_id))
    assert cursor.rowcount == 1, f"settlement {settlement_id} is not being built"


def complete_draft(tx: Tx, *, settlement_id: str, status: str, reserve_release_at_ms: int | None) -> None:
    """The last chunk committed: the batch becomes visible (and payable when pending)."""
    cursor = tx.execute("UPDATE settlements SET status = ?, reserve_release_at_ms = ?, complete = 1, gross_by_channel = NULL"
                        " WHERE id = ? AND complete = 0", (status, reserve_release_at_ms, settlement_id))
    assert cursor.rowcount == 1, f"settlement {settlement_id} completed twice"


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


def get_settlement_tx(tx: Tx, *, settlement_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT *, (SELECT kyc_status FROM merchants m WHERE m.id = settlements.merchant_id) AS merchant_kyc_status"
                  " FROM settlements WHERE id = ?", (settlement_id,))


def settlement_lines_tx(tx: Tx, *, settlement_id: str) -> list[sqlite3.Row]:
    return tx.all("SELECT * FROM settlement_lines WHERE settlement_id = ? ORDER BY line", (settlement_id,))


def mark_paid(tx: Tx, *, settlement_id: str, payout_reference: str, now_ms: int) -> bool:
    """pending -> paid; False when the batch is not pending (paid already, or carried)."""
    cursor = tx.execute(
        "UPDATE settlements SET status = 'paid', payout_reference = ?, paid_at_ms = ? WHERE id = ? AND status = 'pending'"
        " AND complete = 1",
        (payout_reference, now_ms, settlement_id),
    )
    return cursor.rowcount == 1


async def fetch_settlement(db: Database, *, settlement_id: str) -> sqlite3.Row | None:
    """A complete batch (one still being built is not there yet)."""
    return await db.fetch_one("SELECT *, (SELECT kyc_status FROM merchants m WHERE m.id = settlements.merchant_id) AS merchant_kyc_status"
                              " FROM settlements WHERE id = ? AND complete = 1", (settlement_id,))


async def fetch_lines(db: Database, *, settlement_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM settlement_lines WHERE settlement_id = ? ORDER BY line", (settlement_id,))


async def list_settlements(db: Database, *, merchant_id: str, after_id: str | None, limit: int, status: str | None,
                           currency: str | None) -> list[sqlite3.Row]:
    """Newest first; `after_id` is the last id of the previous page."""
    return await db.fetch_all(
        "SELECT *, (SELECT kyc_status FROM merchants m WHERE m.id = settlements.merchant_id) AS merchant_kyc_status"
        " FROM settlements WHERE merchant_id = ? AND complete = 1 AND (? IS NULL OR id < ?) AND (? IS NULL OR status = ?)"
        " AND (? IS NULL OR currency = ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, status, status, currency, currency, limit),
    )

"""Disputes, their events, the merchants' dispute policies, the sandbox provider's own disputes,
and the reads the evidence bundle is made of."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "chargeback_entries_tx",
    "delivery_of",
    "dispute_by_provider_id_tx",
    "fetch_dispute",
    "fetch_policy",
    "get_dispute_tx",
    "get_policy_tx",
    "insert_dispute",
    "insert_event",
    "list_disputes",
    "list_events",
    "mark_evidence_submitted",
    "move_dispute",
    "player_disputes",
    "player_first_order_ms",
    "player_orders",
    "player_refunds",
    "sandbox_dispute_tx",
    "fetch_sandbox_dispute",
    "insert_sandbox_dispute",
    "set_sandbox_dispute",
    "upsert_policy",
    "wallet_lines_of_order",
]


# -- disputes ---------------------------------------------------------------------------------
def insert_dispute(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO disputes (id, merchant_id, order_id, payment_id, channel, provider_dispute_id, player_id, reason,"
        " amount, currency, status, inquiry, evidence_due_by_ms, refund_id, revoke_goods, player_block_requested,"
        " created_at_ms, updated_at_ms) VALUES (:id, :merchant_id, :order_id, :payment_id, :channel,"
        " :provider_dispute_id, :player_id, :reason, :amount, :currency, :status, :inquiry, :evidence_due_by_ms,"
        " :refund_id, :revoke_goods, :player_block_requested, :created_at_ms, :created_at_ms)",
        row,
    )


def get_dispute_tx(tx: Tx, *, dispute_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM disputes WHERE id = ?", (dispute_id,))


def dispute_by_provider_id_tx(tx: Tx, *, merchant_id: str, channel: str, provider_dispute_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM disputes WHERE merchant_id = ? AND channel = ? AND provider_dispute_id = ?",
                  (merchant_id, channel, provider_dispute_id))


async def fetch_dispute(db: Database, *, dispute_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM disputes WHERE id = ?", (dispute_id,))


async def list_disputes(db: Database, *, merchant_id: str, after_id: str | None, limit: int,
                        status: str | None) -> list[sqlite3.Row]:
    """Newest first; `after_id` is the cursor (the last id of the previous page)."""
    assert limit >= 1
    sql, args = "SELECT * FROM disputes WHERE merchant_id = ?", [merchant_id]
    if after_id:
        sql, args = sql + " AND id < ?", [*args, after_id]
    if status:
        sql, args = sql + " AND status = ?", [*args, status]
    return await db.fetch_all(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))


def move_dispute(tx: Tx, *, dispute_id: str, from_status: str, to_status: str, now_ms: int, closed: bool) -> bool:
    """A guarded move: False when the dispute is no longer in `from_status` (stale)."""
    cursor = tx.execute(
        "UPDATE disputes SET status = ?, updated_at_ms = ?, closed_at_ms = CASE WHEN ? = 1 THEN ? ELSE closed_at_ms END"
        " WHERE id = ? AND status = ?", (to_status, now_ms, closed, now_ms, dispute_id, from_status))
    assert cursor.rowcount <= 1
    return cursor.rowcount == 1


def mark_evidence_submitted(tx: Tx, *, dispute_id: str, now_ms: int) -> bool:
    cursor = tx.execute("UPDATE disputes SET evidence_submitted_at_ms = ?, updated_at_ms = ?"
                        " WHERE id = ? AND evidence_submitted_at_ms IS NULL", (now_ms, now_ms, dispute_id))
    return cursor.rowcount == 1


def insert_event(tx: Tx, *, dispute_id: str, type: str, from_status: str | None, to_status: str | None, cause: str,
                 detail: str | None, now_ms: int) -> None:
    tx.execute("INSERT INTO dispute_events (dispute_id, type, from_status, to_status, cause, detail, created_at_ms)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)", (dispute_id, type, from_status, to_status, cause, detail, now_ms))


async def list_events(db: Database, *, dispute_id: str, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM dispute_events WHERE dispute_id = ? ORDER BY seq LIMIT ?", (dispute_id, limit))


def chargeback_entries_tx(tx: Tx, *, references: tuple[str, ...]) -> list[sqlite3.Row]:
    """The entries of the chargeback ledger transactions with these references, in posting order."""
    marks = ", ".join("?" * len(references))
    return tx.all(
        "SELECT e.account, e.currency, e.debit, e.credit FROM ledger_transactions t"
        " JOIN ledger_entries e ON e.transaction_id = t.id"
        f" WHERE t.kind = 'chargeback' AND t.reference IN ({marks}) ORDER BY t.created_at_ms, t.id, e.seq", references)


# -- policies ---------------------------------------------------------------------------------
def get_policy_tx(tx: Tx, *, merchant_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM dispute_policies WHERE merchant_id = ?", (merchant_id,))


async def fetch_policy(db: Database, *, merchant_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM dispute_policies WHERE merchant_id = ?", (merchant_id,))


def upsert_policy(tx: Tx, *, merchant_id: str, revoke_goods: bool, block_player: bool, now_ms: int) -> None:
    tx.execute("INSERT INTO dispute_policies (merchant_id, revoke_goods, block_player, updated_at_ms) VALUES (?, ?, ?, ?)"
               " ON CONFLICT (merchant_id) DO UPDATE SET revoke_goods = excluded.revoke_goods,"
               " block_player = excluded.block_player, updated_at_ms = excluded.updated_at_ms",
               (merchant_id, int(revoke_goods), int(block_player), now_ms))


# -- the evidence bundle's reads ----------------------------------------------------------------
async def delivery_of(db: Database, *, order_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM deliveries WHERE order_id = ?", (order_id,))


async def wallet_lines_of_order(db: Database, *, merchant_id: str, order_id: str, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM wallet_transactions WHERE merchant_id = ? AND order_id = ? ORDER BY id LIMIT ?",
                              (merchant_id, order_id, limit))


async def player_orders(db: Database, *, merchant_id: str, player_id: str, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT id, status, amount, currency, created_at_ms FROM orders WHERE merchant_id = ? AND player_id = ?"
        " ORDER BY id DESC LIMIT ?", (merchant_id, player_id, limit))


async def player_first_order_ms(db: Database, *, merchant_id: str, player_id: str) -> sqlite3.Row:
    return await db.fetch_one(
        "SELECT min(created_at_ms) AS first_ms, count(*) AS orders,"
        " coalesce(sum(CASE WHEN status IN ('fulfilled', 'paid', 'delivering', 'partially_refunded', 'refunded')"
        " THEN 1 ELSE 0 END), 0) AS paid FROM orders WHERE merchant_id = ? AND player_id = ?", (merchant_id, player_id))


async def player_refunds(db: Database, *, merchant_id: str, player_id: str, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT r.id, r.order_id, r.amount, r.currency, r.status, r.reason, r.created_at_ms FROM refunds r"
        " JOIN orders o ON o.id = r.order_id WHERE o.merchant_id = ? AND o.player_id = ? ORDER BY r.id DESC LIMIT ?",
        (merchant_id, player_id, limit))


async def player_disputes(db: Database, *, merchant_id: str, player_id: str, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT id, order_id, amount, currency, status, reason, created_at_ms FROM disputes"
        " WHERE merchant_id = ? AND player_id = ? ORDER BY id DESC LIMIT ?", (merchant_id, player_id, limit))


# -- the sandbox provider's disputes ----------------------------------------------------------------
def insert_sandbox_dispute(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO sandbox_disputes (id, merchant_id, payment_id, amount, currency, reason, status, created_at_ms)"
               " VALUES (:id, :merchant_id, :payment_id, :amount, :currency, :reason, :status, :created_at_ms)", row)


def sandbox_dispute_tx(tx: Tx, *, dispute_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM sandbox_disputes WHERE id = ?", (dispute_id,))


def sandbox_payment_disputed(tx: Tx, *, payment_id: str) -> bool:
    """Whether the payer's bank disputes the payment (a dispute open, or lost)."""
    return tx.one("SELECT 1 FROM sandbox_disputes WHERE payment_id = ? AND status != 'won'", (payment_id,)) is not None


async def fetch_sandbox_dispute(db: Database, *, dispute_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM sandbox_disputes WHERE id = ?", (dispute_id,))


def set_sandbox_dispute(tx: Tx, *, dispute_id: str, status: str, evidence: str | None = None) -> None:
    cursor = tx.execute("UPDATE sandbox_disputes SET status = ?, evidence = coalesce(?, evidence) WHERE id = ?",
                        (status, evidence, dispute_id))
    assert cursor.rowcount == 1, dispute_id

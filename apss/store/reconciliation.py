"""Reconciliation's SQL: our side of a statement (payments, refunds, the fees the ledger recorded),
the stored runs and their items, and the statement-free checks (paid not delivered, refunds stuck)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from apss.store.db import Database, Tx

__all__ = [
    "captured_fees",
    "fetch_items",
    "fetch_run",
    "insert_items",
    "insert_run",
    "list_runs",
    "order_lines",
    "order_metadata",
    "paid_not_delivered",
    "payments_by_ids",
    "payments_by_refs",
    "payments_in_span",
    "refund_fees",
    "refunds_by_refs",
    "refunds_in_span",
    "refunds_of_payments",
    "refunds_stuck",
    "run_by_hash",
    "run_by_hash_tx",
]

_CHUNK_MAX = 500  # host parameters per IN (...) list, well under SQLite's limit


async def _fetch_in(db: Database, values: Iterable[str], sql: str, *, before: tuple = (),
                   after: tuple = ()) -> list[sqlite3.Row]:
    """Run `sql`, whose `{marks}` is an IN (...) list, over `values` in chunks of _CHUNK_MAX
    (host parameters: `before`, the chunk, `after`); the rows of every chunk."""
    unique = sorted(set(values))
    rows: list[sqlite3.Row] = []
    for start in range(0, len(unique), _CHUNK_MAX):
        chunk = unique[start:start + _CHUNK_MAX]
        rows += await db.fetch_all(sql.format(marks=", ".join("?" * len(chunk))), (*before, *chunk, *after))
    return rows


# -- our side ----------------------------------------------------------------------------------
_PAYMENT_COLUMNS = "p.id, p.order_id, p.channel, p.status, p.amount, p.currency, p.provider_ref, p.updated_at_ms"


async def payments_by_refs(db: Database, *, merchant_id: str, channel: str, refs: Iterable[str]) -> list[sqlite3.Row]:
    return await _fetch_in(db, refs, f"SELECT {_PAYMENT_COLUMNS} FROM payments p WHERE p.channel = ?"
                           " AND p.provider_ref IN ({marks}) AND p.merchant_id = ?", before=(channel,), after=(merchant_id,))


async def payments_by_ids(db: Database, *, merchant_id: str, channel: str, ids: Iterable[str]) -> list[sqlite3.Row]:
    return await _fetch_in(db, ids, f"SELECT {_PAYMENT_COLUMNS} FROM payments p WHERE p.id IN ({{marks}})"
                           " AND p.merchant_id = ? AND p.channel = ?", after=(merchant_id, channel))


async def payments_in_span(db: Database, *, merchant_id: str, channel: str, from_ms: int, to_ms: int,
                           limit: int) -> list[sqlite3.Row]:
    """Succeeded payments captured (posted to the ledger) within [from, to)."""
    return await db.fetch_all(
        f"SELECT {_PAYMENT_COLUMNS}, t.created_at_ms AS posted_at_ms FROM ledger_transactions t"
        " JOIN payments p ON p.id = t.reference"
        " WHERE t.merchant_id = ? AND t.created_at_ms >= ? AND t.created_at_ms < ? AND t.kind = 'payment_captured'"
        " AND p.channel = ? AND p.status = 'succeeded' ORDER BY t.created_at_ms LIMIT ?",
        (merchant_id, from_ms, to_ms, channel, limit))


_REFUND_COLUMNS = "r.id, r.payment_id, r.order_id, r.status, r.amount, r.currency, r.provider_refund_ref, r.updated_at_ms"


async def refunds_by_refs(db: Database, *, merchant_id: str, channel: str, refs: Iterable[str]) -> list[sqlite3.Row]:
    return await _fetch_in(db, refs, f"SELECT {_REFUND_COLUMNS} FROM refunds r JOIN payments p ON p.id = r.payment_id"
                           " WHERE r.provider_refund_ref IN ({marks}) AND r.merchant_id = ? AND p.channel = ?",
                           after=(merchant_id, channel))


async def refunds_of_payments(db: Database, *, merchant_id: str, payment_ids: Iterable[str]) -> list[sqlite3.Row]:
    rows = await _fetch_in(db, payment_ids, f"SELECT {_REFUND_COLUMNS} FROM refunds r WHERE r.payment_id IN ({{marks}})"
                           " AND r.merchant_id = ?", after=(merchant_id,))
    return sorted(rows, key=lambda row: row["id"])


async def refunds_in_span(db: Database, *, merchant_id: str, channel: str, from_ms: int, to_ms: int,
                          limit: int) -> list[sqlite3.Row]:
    """Succeeded refunds (not chargebacks) posted to the ledger within [from, to)."""
    return await db.fetch_all(
        f"SELECT {_REFUND_COLUMNS}, t.created_at_ms AS posted_at_ms FROM ledger_transactions t"
        " JOIN refunds r ON r.id = t.reference"
        " JOIN payments p ON p.id = r.payment_id"
        " WHERE t.merchant_id = ? AND t.created_at_ms >= ? AND t.created_at_ms < ? AND t.kind = 'refund'"
        " AND p.channel = ? AND r.status = 'succeeded' ORDER BY t.created_at_ms LIMIT ?",
        (merchant_id, from_ms, to_ms, channel, limit))


async def _fees(db: Database, *, kind: str, references: Iterable[str]) -> dict[str, int]:
    """reference -> the fees_expense debits minus credits of its `kind` ledger transaction."""
    rows = await _fetch_in(db, references, "SELECT t.reference AS reference, coalesce(sum(CASE WHEN e.account"
                           " LIKE 'fees\\_expense:%' ESCAPE '\\' THEN e.debit - e.credit END), 0) AS fee"
                           " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id"
                           " WHERE t.kind = ? AND t.reference IN ({marks}) GROUP BY t.reference", before=(kind,))
    return {row["reference"]: row["fee"] for row in rows}


async def captured_fees(db: Database, *, payment_ids: Iterable[str]) -> dict[str, int]:
    """The provider fee the ledger recorded for each payment: the fees_expense debit of its
    `payment_captured` transaction (0 when the transaction has no fee entry)."""
    return await _fees(db, kind="payment_captured", references=payment_ids)


async def refund_fees(db: Database, *, refund_ids: Iterable[str]) -> dict[str, int]:
    """The fee given back with each refund (an app store returns its commission): its `refund`
    transaction's fees_expense debits minus credits, so <= 0; 0 when none came back."""
    return await _fees(db, kind="refund", references=refund_ids)


async def order_lines(db: Database, *, order_ids: Iterable[str]) -> list[sqlite3.Row]:
    """The product lines (sku, quantity) of the orders."""
    return await _fetch_in(db, order_ids, "SELECT order_id, sku, quantity FROM order_items WHERE order_id IN ({marks})")


async def order_metadata(db: Database, *, order_ids: Iterable[str]) -> list[sqlite3.Row]:
    return await _fetch_in(db, order_ids, "SELECT id, metadata FROM orders WHERE id IN ({marks})")


# -- runs and items ----------------------------------------------------------------------------
async def run_by_hash(db: Database, *, merchant_id: str, channel: str, sha256: str) -> sqlite3.Row | None:
    return await db.fetch_one(
        "SELECT * FROM reconciliation_runs WHERE merchant_id = ? AND channel = ? AND source_sha256 = ?",
        (merchant_id, channel, sha256))


def run_by_hash_tx(tx: Tx, *, merchant_id: str, channel: str, sha256: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM reconciliation_runs WHERE merchant_id = ? AND channel = ? AND source_sha256 = ?",
                  (merchant_id, channel, sha256))


def insert_run(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO reconciliation_runs (id, merchant_id, channel, source_name, source_sha256, span_start_ms,"
        " span_end_ms, counts, created_at_ms) VALUES (:id, :merchant_id, :channel, :source_name, :source_sha256,"
        " :span_start_ms, :span_end_ms, :counts, :created_at_ms)", row)


def insert_items(tx: Tx, rows: list[dict]) -> None:
    tx.executemany(
        "INSERT INTO reconciliation_items (run_id, seq, line, status, kind, provider_ref, payment_id, refund_id,"
        " ours_amount, theirs_amount, ours_fee, theirs_fee, currency, theirs_currency, detail)"
        " VALUES (:run_id, :seq, :line, :status, :kind, :provider_ref, :payment_id, :refund_id, :ours_amount,"
        " :theirs_amount, :ours_fee, :theirs_fee, :currency, :theirs_currency, :detail)", rows)  # type: ignore[arg-type]


async def fetch_run(db: Database, *, merchant_id: str, run_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM reconciliation_runs WHERE id = ? AND merchant_id = ?", (run_id, merchant_id))


async def list_runs(db: Database, *, merchant_id: str, after_id: str | None, limit: int,
                    channel: str | None) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM reconciliation_runs WHERE merchant_id = ? AND (? IS NULL OR id < ?)"
        " AND (? IS NULL OR channel = ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, channel, channel, limit))


async def fetch_items(db: Database, *, run_id: str, status: str | None, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM reconciliation_items WHERE run_id = ? AND (? IS NULL OR status = ?) ORDER BY seq LIMIT ?",
        (run_id, status, status, limit))


# -- statement-free checks ---------------------------------------------------------------------
async def paid_not_delivered(db: Database, *, kind: str, updated_before_ms: int, limit: int) -> list[sqlite3.Row]:
    """Orders paid but not fulfilled since before the cutoff, with no `kind` alert yet."""
    return await db.fetch_all(
        "SELECT o.id, o.merchant_id, o.status, o.updated_at_ms FROM orders o"
        " WHERE o.status IN ('paid', 'delivering') AND o.updated_at_ms < ?"
        " AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.object_id = o.id AND a.kind = ?) ORDER BY o.updated_at_ms LIMIT ?",
        (updated_before_ms, kind, limit))


async def refunds_stuck(db: Database, *, kind: str, created_before_ms: int, limit: int) -> list[sqlite3.Row]:
    """Refunds pending since before the cutoff, with no `kind` alert yet."""
    return await db.fetch_all(
        "SELECT r.id, r.merchant_id, r.order_id, r.amount, r.currency, r.created_at_ms FROM refunds r"
        " WHERE r.status = 'pending' AND r.created_at_ms < ?"
        " AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.object_id = r.id AND a.kind = ?) ORDER BY r.created_at_ms LIMIT ?",
        (created_before_ms, kind, limit))

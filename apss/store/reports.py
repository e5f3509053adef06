"""Reports' SQL: per-product sales from orders, per-channel money from the ledger, stored reports."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "channel_totals",
    "daily_reports_within",
    "existing_starts",
    "fetch_report",
    "insert_report",
    "list_reports",
    "merchants_created_before",
    "product_totals",
    "report_by_key_tx",
]


async def product_totals(db: Database, *, merchant_id: str, from_ms: int, to_ms: int) -> list[sqlite3.Row]:
    """Units, gross and orders per product and currency, of the payments captured in [from, to):
    order lines joined with the payments whose `payment_captured` ledger transaction falls in the period."""
    return await db.fetch_all(
        "SELECT oi.product_id, oi.sku, p.currency, sum(oi.quantity) AS quantity, sum(oi.amount) AS gross,"
        " count(DISTINCT p.order_id) AS orders"
        " FROM ledger_transactions t JOIN payments p ON p.id = t.reference JOIN order_items oi ON oi.order_id = p.order_id"
        " WHERE t.merchant_id = ? AND t.created_at_ms >= ? AND t.created_at_ms < ? AND t.kind = 'payment_captured'"
        " GROUP BY oi.product_id, oi.sku, p.currency ORDER BY oi.sku, oi.product_id, p.currency",
        (merchant_id, from_ms, to_ms))


async def channel_totals(db: Database, *, merchant_id: str, from_ms: int, to_ms: int) -> list[sqlite3.Row]:
    """Per transaction kind, channel account (`<channel>:<merchant>`) and currency, within [from, to):
    provider clearing debits and credits, provider fees (net), and the number of transactions."""
    return await db.fetch_all(
        "SELECT t.kind, substr(e.account, instr(e.account, ':') + 1) AS channel_account, e.currency,"
        " sum(CASE WHEN substr(e.account, 1, 18) = 'provider_clearing:' THEN e.debit ELSE 0 END) AS clearing_debits,"
        " sum(CASE WHEN substr(e.account, 1, 18) = 'provider_clearing:' THEN e.credit ELSE 0 END) AS clearing_credits,"
        " sum(CASE WHEN substr(e.account, 1, 13) = 'fees_expense:' THEN e.debit - e.credit ELSE 0 END) AS fees,"
        " count(DISTINCT t.id) AS transactions"
        " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id"
        " WHERE t.merchant_id = ? AND t.created_at_ms >= ? AND t.created_at_ms < ?"
        " AND (substr(e.account, 1, 18) = 'provider_clearing:' OR substr(e.account, 1, 13) = 'fees_expense:')"
        " GROUP BY t.kind, channel_account, e.currency ORDER BY channel_account, e.currency, t.kind",
        (merchant_id, from_ms, to_ms))


async def daily_reports_within(db: Database, *, merchant_id: str, from_ms: int, to_ms: int) -> list[sqlite3.Row]:
    """Stored daily reports whose day lies wholly in [from, to), in day order: start, end, body."""
    return await db.fetch_all(
        "SELECT period_start_ms, period_end_ms, body FROM reports WHERE merchant_id = ? AND period = 'daily'"
        " AND period_start_ms >= ? AND period_end_ms <= ? ORDER BY period_start_ms",
        (merchant_id, from_ms, to_ms))


async def merchants_created_before(db: Database, *, before_ms: int) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT id, created_at_ms FROM merchants WHERE created_at_ms < ? ORDER BY id", (before_ms,))


async def existing_starts(db: Database, *, merchant_id: str, period: str, from_ms: int) -> set[int]:
    rows = await db.fetch_all(
        "SELECT period_start_ms FROM reports WHERE merchant_id = ? AND period = ? AND period_start_ms >= ?",
        (merchant_id, period, from_ms))
    return {row["period_start_ms"] for row in rows}


def insert_report(tx: Tx, row: dict) -> bool:
    """False when the (merchant, period, start) report exists already: a period is reported once."""
    cursor = tx.execute(
        "INSERT INTO reports (id, merchant_id, period, period_start_ms, period_end_ms, body, created_at_ms)"
        " VALUES (:id, :merchant_id, :period, :period_start_ms, :period_end_ms, :body, :created_at_ms)"
        " ON CONFLICT (merchant_id, period, period_start_ms) DO NOTHING", row)
    return cursor.rowcount == 1


def report_by_key_tx(tx: Tx, *, merchant_id: str, period: str, period_start_ms: int) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM reports WHERE merchant_id = ? AND period = ? AND period_start_ms = ?",
                  (merchant_id, period, period_start_ms))


async def fetch_report(db: Database, *, merchant_id: str, report_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM reports WHERE id = ? AND merchant_id = ?", (report_id, merchant_id))


async def list_reports(db: Database, *, merchant_id: str, period: str | None, after_id: str | None,
                       limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM reports WHERE merchant_id = ? AND (? IS NULL OR period = ?) AND (? IS NULL OR id < ?)"
        " ORDER BY id DESC LIMIT ?",
        (merchant_id, period, period, after_id, after_id, limit))

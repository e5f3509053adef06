"""Refunds."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "fetch_refund",
    "finish_refund",
    "get_refund",
    "insert_refund",
    "list_for_order",
    "refund_by_provider_ref",
    "refunded_total",
    "set_provider_ref",
]


def insert_refund(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO refunds (id, merchant_id, order_id, payment_id, amount, currency, status, reason, created_at_ms,"
        " updated_at_ms) VALUES (:id, :merchant_id, :order_id, :payment_id, :amount, :currency, :status, :reason,"
        " :created_at_ms, :created_at_ms)",
        row,
    )


def get_refund(tx: Tx, *, refund_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM refunds WHERE id = ?", (refund_id,))


def refund_by_provider_ref(tx: Tx, *, provider_ref: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM refunds WHERE provider_refund_ref = ?", (provider_ref,))


async def fetch_refund(db: Database, *, refund_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM refunds WHERE id = ?", (refund_id,))


async def list_for_order(db: Database, *, merchant_id: str, order_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM refunds WHERE merchant_id = ? AND order_id = ? ORDER BY id", (merchant_id, order_id))


def refunded_total(tx: Tx, *, payment_id: str, statuses: tuple[str, ...]) -> int:
    marks = ", ".join("?" * len(statuses))
    row = tx.one(f"SELECT coalesce(sum(amount), 0) AS total FROM refunds WHERE payment_id = ? AND status IN ({marks})",
                 (payment_id, *statuses))
    return row["total"]


def set_provider_ref(tx: Tx, *, refund_id: str, provider_ref: str) -> None:
    tx.execute("UPDATE refunds SET provider_refund_ref = ? WHERE id = ?", (provider_ref, refund_id))


def finish_refund(tx: Tx, *, refund_id: str, status: str, failure_code: str | None, clawback: str | None, now_ms: int) -> None:
    cursor = tx.execute(
        "UPDATE refunds SET status = ?, failure_code = ?, clawback = ?, updated_at_ms = ? WHERE id = ? AND status = 'pending'",
        (status, failure_code, clawback, now_ms, refund_id),
    )
    assert cursor.rowcount == 1, "a refund leaves pending once"

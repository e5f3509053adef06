"""In-app purchases: the store transactions each merchant delivered (migration 0026) and their
acknowledgements to the store (0029)."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = ["acknowledgements_due", "first_of_original_tx", "get_transaction", "get_transaction_tx", "get_transaction_by_order_tx",
           "insert_transaction", "product_by_sku", "product_by_sku_tx", "set_ack_failed", "set_acknowledged",
           "set_revoked"]


def get_transaction_tx(tx: Tx, *, merchant_id: str, store: str, transaction_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM store_transactions WHERE merchant_id = ? AND store = ? AND transaction_id = ?",
                  (merchant_id, store, transaction_id))


def get_transaction_by_order_tx(tx: Tx, *, order_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM store_transactions WHERE order_id = ?", (order_id,))


def first_of_original_tx(tx: Tx, *, merchant_id: str, store: str, original_transaction_id: str) -> sqlite3.Row | None:
    """The earliest delivered transaction of a subscription (or purchase) chain: its player."""
    return tx.one("SELECT * FROM store_transactions WHERE merchant_id = ? AND store = ? AND original_transaction_id = ?"
                  " ORDER BY purchased_at_ms, created_at_ms LIMIT 1", (merchant_id, store, original_transaction_id))


def insert_transaction(tx: Tx, row: dict) -> None:
    """The primary key (merchant_id, store, transaction_id) makes a second delivery fail here."""
    tx.execute(
        "INSERT INTO store_transactions (merchant_id, store, transaction_id, original_transaction_id, product_id,"
        " order_id, player_id, environment, purchased_at_ms, expires_at_ms, revoked_at_ms, created_at_ms,"
        " store_product_id, kind, ack_due_at_ms) VALUES"
        " (:merchant_id, :store, :transaction_id, :original_transaction_id, :product_id, :order_id, :player_id,"
        " :environment, :purchased_at_ms, :expires_at_ms, NULL, :created_at_ms, :store_product_id, :kind,"
        " :ack_due_at_ms)",
        row,
    )


def set_revoked(tx: Tx, *, merchant_id: str, store: str, transaction_id: str, revoked_at_ms: int) -> bool:
    cursor = tx.execute("UPDATE store_transactions SET revoked_at_ms = ? WHERE merchant_id = ? AND store = ?"
                        " AND transaction_id = ? AND revoked_at_ms IS NULL",
                        (revoked_at_ms, merchant_id, store, transaction_id))
    return cursor.rowcount == 1


async def acknowledgements_due(db: Database, *, now_ms: int, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT merchant_id, store, transaction_id FROM store_transactions"
                              " WHERE ack_due_at_ms IS NOT NULL AND ack_due_at_ms <= ? ORDER BY ack_due_at_ms LIMIT ?",
                              (now_ms, limit))


async def get_transaction(db: Database, *, merchant_id: str, store: str, transaction_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM store_transactions WHERE merchant_id = ? AND store = ?"
                              " AND transaction_id = ?", (merchant_id, store, transaction_id))


def set_acknowledged(tx: Tx, *, merchant_id: str, store: str, transaction_id: str, now_ms: int) -> None:
    tx.execute("UPDATE store_transactions SET ack_due_at_ms = NULL, acknowledged_at_ms = ? WHERE merchant_id = ?"
               " AND store = ? AND transaction_id = ? AND ack_due_at_ms IS NOT NULL",
               (now_ms, merchant_id, store, transaction_id))


def set_ack_failed(tx: Tx, *, merchant_id: str, store: str, transaction_id: str, next_at_ms: int) -> None:
    """One more failed attempt, the next one due at `next_at_ms`."""
    tx.execute("UPDATE store_transactions SET ack_attempts = ack_attempts + 1, ack_due_at_ms = ? WHERE merchant_id = ?"
               " AND store = ? AND transaction_id = ? AND ack_due_at_ms IS NOT NULL",
               (next_at_ms, merchant_id, store, transaction_id))


async def product_by_sku(db: Database, *, merchant_id: str, sku: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM products WHERE merchant_id = ? AND sku = ?", (merchant_id, sku))


def product_by_sku_tx(tx: Tx, *, merchant_id: str, sku: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM products WHERE merchant_id = ? AND sku = ?", (merchant_id, sku))

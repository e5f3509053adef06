"""What players own: inventory items, memberships, entitlements, wallet balances."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "add_entitlement",
    "add_items",
    "apply_wallet_change",
    "extend_membership",
    "extend_membership_to",
    "membership_expiry_tx",
    "set_membership_expiry",
    "get_balance_tx",
    "inventory",
    "item_quantity_tx",
    "remove_entitlement",
    "remove_items",
    "shorten_membership",
    "wallet_balances",
]


def add_items(tx: Tx, *, merchant_id: str, player_id: str, sku: str, quantity: int, now_ms: int) -> None:
    assert quantity > 0
    tx.execute(
        "INSERT INTO inventory_items (merchant_id, player_id, sku, quantity, updated_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (merchant_id, player_id, sku) DO UPDATE SET quantity = inventory_items.quantity + excluded.quantity, updated_at_ms = excluded.updated_at_ms",
        (merchant_id, player_id, sku, quantity, now_ms),
    )


def item_quantity_tx(tx: Tx, *, merchant_id: str, player_id: str, sku: str) -> int:
    row = tx.one("SELECT quantity FROM inventory_items WHERE merchant_id = ? AND player_id = ? AND sku = ?",
                 (merchant_id, player_id, sku))
    return 0 if row is None else row["quantity"]


def remove_items(tx: Tx, *, merchant_id: str, player_id: str, sku: str, quantity: int, now_ms: int) -> None:
    assert quantity > 0
    cursor = tx.execute(
        "UPDATE inventory_items SET quantity = quantity - ?, updated_at_ms = ? WHERE merchant_id = ? AND player_id = ?"
        " AND sku = ? AND quantity >= ?",
        (quantity, now_ms, merchant_id, player_id, sku, quantity),
    )
    assert cursor.rowcount == 1, "removed more items than the player has"


def shorten_membership(tx: Tx, *, merchant_id: str, player_id: str, sku: str, duration_ms: int, now_ms: int) -> None:
    """Take back `duration_ms` of a membership; it ends now at the earliest."""
    assert duration_ms > 0
    tx.execute(
        "UPDATE memberships SET expires_at_ms = max(?, expires_at_ms - ?), updated_at_ms = ? WHERE merchant_id = ?"
        " AND player_id = ? AND sku = ?",
        (now_ms, duration_ms, now_ms, merchant_id, player_id, sku),
    )


def remove_entitlement(tx: Tx, *, merchant_id: str, player_id: str, sku: str, order_id: str) -> None:
    """Remove the entitlement if this order granted it (another purchase of the sku keeps it)."""
    tx.execute("DELETE FROM entitlements WHERE merchant_id = ? AND player_id = ? AND sku = ? AND order_id = ?",
               (merchant_id, player_id, sku, order_id))


def extend_membership(tx: Tx, *, merchant_id: str, player_id: str, sku: str, duration_ms: int, now_ms: int) -> None:
    """A running membership is extended from its end; a lapsed or new one starts now."""
    assert duration_ms > 0
    tx.execute(
        "INSERT INTO memberships (merchant_id, player_id, sku, expires_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (merchant_id, player_id, sku) DO UPDATE SET"
        " expires_at_ms = max(memberships.expires_at_ms, excluded.updated_at_ms) + ?,"
        " updated_at_ms = excluded.updated_at_ms",
        (merchant_id, player_id, sku, now_ms + duration_ms, now_ms, duration_ms),
    )


def extend_membership_to(tx: Tx, *, merchant_id: str, player_id: str, sku: str, until_ms: int, now_ms: int) -> None:
    """A subscription's membership runs to the end of the period paid for (never shortened here)."""
    tx.execute(
        "INSERT INTO memberships (merchant_id, player_id, sku, expires_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (merchant_id, player_id, sku) DO UPDATE SET"
        " expires_at_ms = max(memberships.expires_at_ms, excluded.expires_at_ms),"
        " updated_at_ms = excluded.updated_at_ms",
        (merchant_id, player_id, sku, until_ms, now_ms),
    )


def set_membership_expiry(tx: Tx, *, merchant_id: str, player_id: str, sku: str, expires_at_ms: int, now_ms: int) -> None:
    """End (or keep) a subscription's membership at exactly `expires_at_ms` (cancel, grace, retries)."""
    tx.execute(
        "INSERT INTO memberships (merchant_id, player_id, sku, expires_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (merchant_id, player_id, sku) DO UPDATE SET expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
        (merchant_id, player_id, sku, expires_at_ms, now_ms),
    )


def membership_expiry_tx(tx: Tx, *, merchant_id: str, player_id: str, sku: str) -> int | None:
    row = tx.one("SELECT expires_at_ms FROM memberships WHERE merchant_id = ? AND player_id = ? AND sku = ?",
                 (merchant_id, player_id, sku))
    return None if row is None else row["expires_at_ms"]


def add_entitlement(tx: Tx, *, merchant_id: str, player_id: str, sku: str, order_id: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO entitlements (merchant_id, player_id, sku, order_id, granted_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (merchant_id, player_id, sku, order_id, now_ms),
    )


def get_balance_tx(tx: Tx, *, merchant_id: str, player_id: str, currency: str) -> int:
    row = tx.one(
        "SELECT balance FROM wallet_balances WHERE merchant_id = ? AND player_id = ? AND currency = ?",
        (merchant_id, player_id, currency),
    )
    return 0 if row is None else row["balance"]


def apply_wallet_change(
    tx: Tx, *, txn_id: str, merchant_id: str, player_id: str, currency: str, amount: int,
    reason: str | None, order_id: str | None, now_ms: int,
) -> int:
    """Add `amount` (negative debits) and journal it; returns the new balance. Callers check a
    debit against the balance first (the writer makes check-then-write atomic)."""
    assert amount != 0
    row = tx.one(
        "INSERT INTO wallet_balances (merchant_id, player_id, currency, balance, updated_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (merchant_id, player_id, currency) DO UPDATE SET balance = wallet_balances.balance + excluded.balance,"
        " updated_at_ms = excluded.updated_at_ms"
        " RETURNING balance",
        (merchant_id, player_id, currency, amount, now_ms),
    )
    balance = row["balance"]
    tx.execute(
        "INSERT INTO wallet_transactions (id, merchant_id, player_id, currency, amount, balance_after, reason,"
        " order_id, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (txn_id, merchant_id, player_id, currency, amount, balance, reason, order_id, now_ms),
    )
    return balance


async def inventory(db: Database, *, merchant_id: str, player_id: str, now_ms: int) -> dict[str, list[sqlite3.Row]]:
    items = await db.fetch_all(
        "SELECT sku, quantity FROM inventory_items WHERE merchant_id = ? AND player_id = ? AND quantity > 0 ORDER BY sku",
        (merchant_id, player_id),
    )
    memberships = await db.fetch_all(
        "SELECT sku, expires_at_ms FROM memberships WHERE merchant_id = ? AND player_id = ? AND expires_at_ms > ? ORDER BY sku",
        (merchant_id, player_id, now_ms),
    )
    entitlements = await db.fetch_all(
        "SELECT sku, granted_at_ms FROM entitlements WHERE merchant_id = ? AND player_id = ? ORDER BY sku",
        (merchant_id, player_id),
    )
    return {"items": items, "memberships": memberships, "entitlements": entitlements}


async def wallet_balances(db: Database, *, merchant_id: str, player_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT currency, balance FROM wallet_balances WHERE merchant_id = ? AND player_id = ? ORDER BY currency",
        (merchant_id, player_id),
    )

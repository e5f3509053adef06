"""Products and their stock accounting: stock (free) -> reserved -> sold, atomically.

Every stock move is one conditional UPDATE, so stock can never go below zero; callers check
first (within the writer, check-then-write is atomic) and assert the UPDATE took.
"""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "adjust_stock",
    "free_stock",
    "get_product",
    "get_product_tx",
    "insert_product",
    "list_products",
    "release_reserved",
    "return_sold",
    "reserve",
    "set_stock",
    "sku_taken",
    "take_free",
    "take_reserved",
    "update_product",
    "virtual_currency_granted",
]


def insert_product(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO products (id, merchant_id, sku, name, category, prices, stock, reserved, sold,"
        " purchase_limit, grants, active, browser_sellable, created_at_ms, updated_at_ms, billing) VALUES (:id,"
        " :merchant_id, :sku, :name, :category, :prices, :stock, 0, 0, :purchase_limit, :grants, :active,"
        " :browser_sellable, :created_at_ms, :created_at_ms, :billing)",
        {"billing": None, "browser_sellable": 0, **row},
    )


def sku_taken(tx: Tx, *, merchant_id: str, sku: str) -> bool:
    return tx.one("SELECT 1 FROM products WHERE merchant_id = ? AND sku = ?", (merchant_id, sku)) is not None


def free_stock(tx: Tx, *, product_id: str) -> int | None:
    """Free units of a product; None means unlimited."""
    row = tx.one("SELECT stock FROM products WHERE id = ?", (product_id,))
    assert row is not None, product_id
    return row["stock"]


def get_product_tx(tx: Tx, *, merchant_id: str, product_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM products WHERE id = ? AND merchant_id = ?", (product_id, merchant_id))


async def get_product(db: Database, *, merchant_id: str, product_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM products WHERE id = ? AND merchant_id = ?", (product_id, merchant_id))


async def list_products(db: Database, *, merchant_id: str, after_id: str | None, limit: int, active: bool | None) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM products WHERE merchant_id = ? AND (? IS NULL OR id < ?) AND (? IS NULL OR active = ?)"
        " ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, active, active, limit),
    )


def update_product(tx: Tx, *, product_id: str, fields: dict, now_ms: int) -> None:
    allowed = {"name", "prices", "purchase_limit", "grants", "active", "browser_sellable"}
    assert set(fields) <= allowed, set(fields) - allowed
    if not fields:
        return
    assignments = ", ".join(f"{name} = :{name}" for name in fields)
    cursor = tx.execute(
        f"UPDATE products SET {assignments}, updated_at_ms = :now WHERE id = :id",
        {**fields, "now": now_ms, "id": product_id},
    )
    assert cursor.rowcount == 1


def set_stock(tx: Tx, *, product_id: str, stock: int | None, now_ms: int) -> None:
    assert stock is None or stock >= 0
    cursor = tx.execute("UPDATE products SET stock = ?, updated_at_ms = ? WHERE id = ?", (stock, now_ms, product_id))
    assert cursor.rowcount == 1


def adjust_stock(tx: Tx, *, product_id: str, delta: int, now_ms: int) -> bool:
    """Add `delta` free units (negative removes); False when that would go below zero."""
    cursor = tx.execute(
        "UPDATE products SET stock = stock + ?, updated_at_ms = ? WHERE id = ? AND stock IS NOT NULL AND stock + ? >= 0",
        (delta, now_ms, product_id, delta),
    )
    return cursor.rowcount == 1


def reserve(tx: Tx, *, product_id: str, quantity: int) -> bool:
    """stock -> reserved; unlimited products only count the reservation."""
    assert quantity > 0
    cursor = tx.execute(
        "UPDATE products SET stock = CASE WHEN stock IS NULL THEN NULL ELSE stock - :q END, reserved = reserved + :q"
        " WHERE id = :id AND (stock IS NULL OR stock >= :q)",
        {"q": quantity, "id": product_id},
    )
    return cursor.rowcount == 1


def release_reserved(tx: Tx, *, product_id: str, quantity: int) -> None:
    """reserved -> stock (expiry, cancel, failed payment)."""
    cursor = tx.execute(
        "UPDATE products SET stock = CASE WHEN stock IS NULL THEN NULL ELSE stock + :q END, reserved = reserved - :q"
        " WHERE id = :id AND reserved >= :q",
        {"q": quantity, "id": product_id},
    )
    assert cursor.rowcount == 1, "released more units than were reserved"


def take_reserved(tx: Tx, *, product_id: str, quantity: int) -> None:
    """reserved -> sold (payment confirmed)."""
    cursor = tx.execute(
        "UPDATE products SET reserved = reserved - :q, sold = sold + :q WHERE id = :id AND reserved >= :q",
        {"q": quantity, "id": product_id},
    )
    assert cursor.rowcount == 1, "confirmed more units than were reserved"


def return_sold(tx: Tx, *, product_id: str, quantity: int) -> None:
    """sold -> stock: a paid order rejected in review, whose goods were never delivered."""
    cursor = tx.execute(
        "UPDATE products SET stock = CASE WHEN stock IS NULL THEN NULL ELSE stock + :q END, sold = sold - :q"
        " WHERE id = :id AND sold >= :q",
        {"q": quantity, "id": product_id},
    )
    assert cursor.rowcount == 1, "returned more units than were sold"


def take_free(tx: Tx, *, product_id: str, quantity: int) -> bool:
    """stock -> sold directly: a late payment for an order whose reservation was released."""
    cursor = tx.execute(
        "UPDATE products SET stock = CASE WHEN stock IS NULL THEN NULL ELSE stock - :q END, sold = sold + :q"
        " WHERE id = :id AND (stock IS NULL OR stock >= :q)",
        {"q": quantity, "id": product_id},
    )
    return cursor.rowcount == 1


# The grants column is a JSON array (text): each engine's own functions walk it.
_GRANTS_CURRENCY = {
    "sqlite": "SELECT 1 FROM products p, json_each(p.grants) g WHERE p.merchant_id = ?"
    " AND json_extract(g.value, '$.type') = 'currency' AND json_extract(g.value, '$.currency') = ? LIMIT 1",
    "postgresql": "SELECT 1 FROM products p, jsonb_array_elements(p.grants::jsonb) AS g(value) WHERE p.merchant_id = ?"
    " AND g.value ->> 'type' = 'currency' AND g.value ->> 'currency' = ? LIMIT 1",
}


def virtual_currency_granted(tx: Tx, *, merchant_id: str, code: str) -> bool:
    """Does any product of the merchant grant virtual currency `code`?"""
    return tx.one(_GRANTS_CURRENCY[tx.dialect], (merchant_id, code)) is not None

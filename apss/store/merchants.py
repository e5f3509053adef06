"""Merchants, their API keys (SHA-256 hashes only), and server settings."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "active_key_hashes_of",
    "active_keys",
    "active_publishable_key_of",
    "active_publishable_keys",
    "all_merchants",
    "fetch_merchant",
    "get_merchant_tx",
    "get_setting_tx",
    "insert_api_key",
    "insert_merchant",
    "insert_publishable_key",
    "list_merchants",
    "revoke_keys",
    "revoke_publishable_keys",
    "set_allowed_origins",
    "set_rate_limit",
    "set_merchant_kyc",
    "set_setting",
]


def insert_merchant(tx: Tx, *, merchant_id: str, name: str, mode: str, currency: str, sandbox_secret_sealed: str | None,
                    now_ms: int, kyc_status: str = "verified") -> None:
    tx.execute(
        "INSERT INTO merchants (id, name, mode, currency, sandbox_webhook_secret_sealed, created_at_ms, kyc_status)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (merchant_id, name, mode, currency, sandbox_secret_sealed, now_ms, kyc_status),
    )


def set_merchant_kyc(tx: Tx, *, merchant_id: str, status: str) -> bool:
    return tx.execute("UPDATE merchants SET kyc_status = ? WHERE id = ?", (status, merchant_id)).rowcount == 1


def insert_api_key(tx: Tx, *, merchant_id: str, key_hash: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO api_keys (key_hash, merchant_id, created_at_ms) VALUES (?, ?, ?)",
        (key_hash, merchant_id, now_ms),
    )


def revoke_keys(tx: Tx, *, merchant_id: str, now_ms: int) -> list[str]:
    """Revoke every active key of the merchant; returns their hashes (for the auth cache)."""
    rows = tx.all(
        "UPDATE api_keys SET revoked_at_ms = ? WHERE merchant_id = ? AND revoked_at_ms IS NULL RETURNING key_hash",
        (now_ms, merchant_id),
    )
    return [row["key_hash"] for row in rows]


def insert_publishable_key(tx: Tx, *, merchant_id: str, key: str, now_ms: int) -> None:
    tx.execute("INSERT INTO publishable_keys (key, merchant_id, created_at_ms) VALUES (?, ?, ?)", (key, merchant_id, now_ms))


def revoke_publishable_keys(tx: Tx, *, merchant_id: str, now_ms: int) -> list[str]:
    """Revoke the merchant's active publishable key; returns the keys revoked (for the cache)."""
    rows = tx.all(
        "UPDATE publishable_keys SET revoked_at_ms = ? WHERE merchant_id = ? AND revoked_at_ms IS NULL RETURNING key",
        (now_ms, merchant_id),
    )
    return [row["key"] for row in rows]


async def active_publishable_keys(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT key, merchant_id FROM publishable_keys WHERE revoked_at_ms IS NULL")


def set_allowed_origins(tx: Tx, *, merchant_id: str, origins_json: str) -> None:
    cursor = tx.execute("UPDATE merchants SET allowed_origins = ? WHERE id = ?", (origins_json, merchant_id))
    assert cursor.rowcount == 1, merchant_id


def set_rate_limit(tx: Tx, *, merchant_id: str, per_s: int | None, burst: int | None) -> bool:
    """The merchant's own API rate limit; NULLs: the server's default. False: no such merchant."""
    cursor = tx.execute("UPDATE merchants SET rate_limit_per_s = ?, rate_limit_burst = ? WHERE id = ?",
                        (per_s, burst, merchant_id))
    return cursor.rowcount == 1


def get_merchant_tx(tx: Tx, merchant_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM merchants WHERE id = ?", (merchant_id,))


async def active_keys(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT k.key_hash, m.id AS merchant_id, m.name, m.mode, m.sandbox_webhook_secret_sealed"
        " FROM api_keys k JOIN merchants m ON m.id = k.merchant_id WHERE k.revoked_at_ms IS NULL"
    )


async def active_key_hashes_of(db: Database, merchant_id: str) -> list[str]:
    rows = await db.fetch_all("SELECT key_hash FROM api_keys WHERE merchant_id = ? AND revoked_at_ms IS NULL",
                              (merchant_id,))
    return [row["key_hash"] for row in rows]


async def active_publishable_key_of(db: Database, merchant_id: str) -> str | None:
    row = await db.fetch_one("SELECT key FROM publishable_keys WHERE merchant_id = ? AND revoked_at_ms IS NULL",
                             (merchant_id,))
    return None if row is None else row["key"]


async def list_merchants(db: Database, *, after_id: str | None, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM merchants WHERE (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
        (after_id, after_id, limit),
    )


async def fetch_merchant(db: Database, merchant_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM merchants WHERE id = ?", (merchant_id,))


async def all_merchants(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM merchants")


def get_setting_tx(tx: Tx, name: str) -> str | None:
    row = tx.one("SELECT value FROM settings WHERE name = ?", (name,))
    return None if row is None else row["value"]


def set_setting(tx: Tx, name: str, value: str) -> None:
    tx.execute(
        "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )

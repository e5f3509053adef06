"""Merchant channel settings (secrets sealed), routing, payment attempts, janitor checks."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "all_routing",
    "all_settings",
    "claim_open_payments_due",
    "claim_payments",
    "routing_of",
    "settings_of",
    "insert_attempt",
    "list_attempts",
    "list_refs",
    "open_payments_due",
    "record_check",
    "release_payment",
    "set_routing",
    "upsert_settings",
]


def upsert_settings(tx: Tx, *, merchant_id: str, channel: str, secrets_sealed: str, public_settings: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO channel_settings (merchant_id, channel, secrets_sealed, public_settings, updated_at_ms)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (merchant_id, channel) DO UPDATE SET secrets_sealed = excluded.secrets_sealed,"
        " public_settings = excluded.public_settings, updated_at_ms = excluded.updated_at_ms",
        (merchant_id, channel, secrets_sealed, public_settings, now_ms),
    )


async def all_settings(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM channel_settings ORDER BY merchant_id, updated_at_ms")


async def settings_of(db: Database, merchant_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM channel_settings WHERE merchant_id = ? ORDER BY updated_at_ms",
                              (merchant_id,))


def set_routing(tx: Tx, *, merchant_id: str, routing: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO channel_routing (merchant_id, routing, updated_at_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (merchant_id) DO UPDATE SET routing = excluded.routing, updated_at_ms = excluded.updated_at_ms",
        (merchant_id, routing, now_ms),
    )


async def all_routing(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT merchant_id, routing FROM channel_routing")


async def routing_of(db: Database, merchant_id: str) -> str | None:
    row = await db.fetch_one("SELECT routing FROM channel_routing WHERE merchant_id = ?", (merchant_id,))
    return None if row is None else row["routing"]


def insert_attempt(tx: Tx, *, payment_id: str, channel: str, operation: str, outcome: str, error_code: str | None,
                   provider_code: str | None, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO payment_attempts (payment_id, channel, operation, outcome, error_code, provider_code, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (payment_id, channel, operation, outcome, error_code, provider_code, now_ms),
    )


async def list_attempts(db: Database, *, payment_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM payment_attempts WHERE payment_id = ? ORDER BY seq", (payment_id,))


async def list_refs(db: Database, *, payment_id: str) -> list[str]:
    rows = await db.fetch_all("SELECT provider_ref FROM payment_refs WHERE payment_id = ?"
                              " ORDER BY created_at_ms, provider_ref", (payment_id,))
    return [row["provider_ref"] for row in rows]


async def open_payments_due(db: Database, *, now_ms: int, first_check_ms: int, oldest_ms: int, limit: int) -> list[sqlite3.Row]:
    """Payments whose outcome is not final at our side and whose next status query is due.
    `oldest_ms` only bounds the payments never checked that are not `unknown`: a payment whose
    outcome is unknown, or whose next check is pending, is queried however late the janitor runs
    (after days down), so its schedule ends in an answer or the `payment_unresolved` alert."""
    return await db.fetch_all(f"{_OPEN_DUE} ORDER BY p.created_at_ms LIMIT ?", (oldest_ms, first_check_ms, now_ms, limit))


_OPEN_DUE = (
    "SELECT p.*, coalesce(c.checks_done, 0) AS checks_done FROM payments p"
    " LEFT JOIN payment_checks c ON c.payment_id = p.id"
    # the partial index payments_open's own predicate (migration 0038): spelled as it is, so it is used
    " WHERE (p.status = 'unknown' OR p.status = 'requires_action' OR p.status = 'processing' OR p.status = 'canceled')"
    " AND (p.created_at_ms >= ? OR p.status = 'unknown' OR c.next_check_at_ms IS NOT NULL)"
    " AND c.gave_up_at_ms IS NULL AND coalesce(c.next_check_at_ms, p.created_at_ms + ?) <= ?"
)
# Claimable: not held by another instance's unexpired claim (ours may be taken again).
_UNCLAIMED = "(p.claimed_until_ms IS NULL OR p.claimed_until_ms <= ? OR p.claimed_by = ?)"


def claim_open_payments_due(tx: Tx, *, now_ms: int, first_check_ms: int, oldest_ms: int, limit: int, owner: str,
                            claimed_until_ms: int) -> list[sqlite3.Row]:
    """PostgreSQL (several instances): `open_payments_due`, without the payments another janitor
    holds, each claimed for `owner` until `claimed_until_ms` (rows a concurrent claim has locked are
    skipped, not waited for)."""
    rows = tx.all(f"{_OPEN_DUE} AND {_UNCLAIMED} ORDER BY p.created_at_ms LIMIT ? FOR UPDATE OF p SKIP LOCKED",
                  (oldest_ms, first_check_ms, now_ms, now_ms, owner, limit))
    claim_payments(tx, payment_ids=[row["id"] for row in rows], owner=owner, claimed_until_ms=claimed_until_ms)
    return rows


def claim_payments(tx: Tx, *, payment_ids: list[str], owner: str, claimed_until_ms: int) -> None:
    assert tx.dialect == "postgresql", "SQLite's one writer needs no claims"
    if payment_ids:
        tx.executemany("UPDATE payments SET claimed_by = ?, claimed_until_ms = ? WHERE id = ?",
                       [(owner, claimed_until_ms, payment_id) for payment_id in payment_ids])


def release_payment(tx: Tx, *, payment_id: str) -> None:
    """End a claim (its work recorded): another instance may take the payment at once."""
    tx.execute("UPDATE payments SET claimed_by = NULL, claimed_until_ms = NULL WHERE id = ? AND claimed_by IS NOT NULL",
               (payment_id,))


def record_check(tx: Tx, *, payment_id: str, checks_done: int, next_check_at_ms: int | None, last_status: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO payment_checks (payment_id, checks_done, next_check_at_ms, gave_up_at_ms, last_status)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (payment_id) DO UPDATE SET checks_done = excluded.checks_done,"
        " next_check_at_ms = excluded.next_check_at_ms, gave_up_at_ms = excluded.gave_up_at_ms,"
        " last_status = excluded.last_status",
        (payment_id, checks_done, next_check_at_ms, now_ms if next_check_at_ms is None else None, last_status),
    )

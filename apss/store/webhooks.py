"""Merchant webhooks (endpoints, the event outbox, deliveries) and deliveries to the game."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "ack_delivery",
    "claim_due_deliveries",
    "count_endpoints_tx",
    "delivery_by_order",
    "disable_endpoint",
    "due_deliveries",
    "due_game_pushes",
    "enabled_endpoints_tx",
    "events_since",
    "fail_pending_deliveries",
    "get_delivery",
    "get_delivery_tx",
    "get_endpoint",
    "get_endpoint_tx",
    "get_game_delivery",
    "get_game_delivery_tx",
    "insert_delivery",
    "insert_endpoint",
    "insert_event",
    "insert_game_delivery",
    "list_deliveries",
    "list_endpoints",
    "list_game_deliveries",
    "make_due",
    "mark_game_delivery_alerted",
    "mark_game_delivery_pushed",
    "open_alert_exists",
    "prune_events",
    "record_failure",
    "record_retry",
    "record_success",
    "update_endpoint",
]

_ENDPOINT_FIELDS = {"url", "events", "status", "disabled_reason", "secret_sealed", "previous_secret_sealed",
                    "previous_secret_expires_at_ms"}


# Enabled endpoints by merchant, read once per transaction function (every event it emits asks):
# every write to webhook_endpoints below drops them.
_ENABLED_MEMO = "webhooks.enabled_endpoints"


# -- endpoints ---------------------------------------------------------------------------------
def insert_endpoint(tx: Tx, row: dict) -> None:
    tx.memo.pop(_ENABLED_MEMO, None)
    tx.execute(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, events, secret_sealed, status, created_at_ms, updated_at_ms)"
        " VALUES (:id, :merchant_id, :url, :events, :secret_sealed, 'enabled', :created_at_ms, :created_at_ms)",
        row,
    )


def count_endpoints_tx(tx: Tx, *, merchant_id: str) -> int:
    return tx.one("SELECT count(*) FROM webhook_endpoints WHERE merchant_id = ? AND status = 'enabled'", (merchant_id,))[0]


def get_endpoint_tx(tx: Tx, *, merchant_id: str, endpoint_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM webhook_endpoints WHERE id = ? AND merchant_id = ?", (endpoint_id, merchant_id))


async def get_endpoint(db: Database, *, merchant_id: str, endpoint_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM webhook_endpoints WHERE id = ? AND merchant_id = ?", (endpoint_id, merchant_id))


async def list_endpoints(db: Database, *, merchant_id: str, after_id: str | None, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM webhook_endpoints WHERE merchant_id = ? AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, limit),
    )


def enabled_endpoints_tx(tx: Tx, *, merchant_id: str) -> tuple[sqlite3.Row, ...]:
    by_merchant = tx.memo.setdefault(_ENABLED_MEMO, {})
    endpoints = by_merchant.get(merchant_id)
    if endpoints is None:
        endpoints = by_merchant[merchant_id] = tuple(tx.all(
            "SELECT id, events FROM webhook_endpoints WHERE merchant_id = ? AND status = 'enabled'", (merchant_id,)))
    return endpoints


def update_endpoint(tx: Tx, *, endpoint_id: str, fields: dict, now_ms: int) -> None:
    assert set(fields) <= _ENDPOINT_FIELDS, set(fields) - _ENDPOINT_FIELDS
    tx.memo.pop(_ENABLED_MEMO, None)
    assignments = "".join(f"{name} = :{name}, " for name in fields)
    tx.execute(f"UPDATE webhook_endpoints SET {assignments}updated_at_ms = :now_ms WHERE id = :id",
               {**fields, "now_ms": now_ms, "id": endpoint_id})


def disable_endpoint(tx: Tx, *, endpoint_id: str, reason: str, now_ms: int) -> bool:
    """Disable once; False if it already was."""
    tx.memo.pop(_ENABLED_MEMO, None)
    cursor = tx.execute(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = ?, updated_at_ms = ?"
        " WHERE id = ? AND status = 'enabled'", (reason, now_ms, endpoint_id))
    return cursor.rowcount == 1


# -- events and deliveries -----------------------------------------------------------------------
def insert_event(tx: Tx, *, event_id: str, merchant_id: str, type: str, payload: bytes, now_ms: int) -> None:
    tx.execute("INSERT INTO webhook_events (id, merchant_id, type, payload, created_at_ms) VALUES (?, ?, ?, ?, ?)",
               (event_id, merchant_id, type, payload, now_ms))


def insert_delivery(tx: Tx, *, delivery_id: str, merchant_id: str, event_id: str, endpoint_id: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO webhook_deliveries (id, merchant_id, event_id, endpoint_id, status, next_attempt_at_ms, created_at_ms)"
        " VALUES (?, ?, ?, ?, 'pending', ?, ?)", (delivery_id, merchant_id, event_id, endpoint_id, now_ms, now_ms))


def events_since(tx: Tx, *, merchant_id: str, since_ms: int, limit: int) -> list[sqlite3.Row]:
    return tx.all(
        "SELECT id, type FROM webhook_events WHERE merchant_id = ? AND created_at_ms >= ? ORDER BY created_at_ms, id LIMIT ?",
        (merchant_id, since_ms, limit))


def make_due(tx: Tx, *, delivery_id: str, now_ms: int) -> None:
    """A pending delivery waiting out its backoff is tried at once (manual retry)."""
    tx.execute("UPDATE webhook_deliveries SET next_attempt_at_ms = ? WHERE id = ? AND status = 'pending'",
               (now_ms, delivery_id))


_DUE_FROM = (
    "SELECT d.id, d.event_id, d.endpoint_id, d.merchant_id, d.attempts, d.created_at_ms, e.type, e.payload,"
    " w.url, w.status AS endpoint_status, w.secret_sealed, w.previous_secret_sealed, w.previous_secret_expires_at_ms,"
    " m.mode AS merchant_mode"  # the SSRF rules of the merchant as it is now, not when the URL was saved
    " FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id JOIN webhook_endpoints w ON w.id = d.endpoint_id"
    " JOIN merchants m ON m.id = d.merchant_id"
    " WHERE d.status = 'pending' AND d.next_attempt_at_ms <= ?"
)
_DUE_SQL = f"{_DUE_FROM} ORDER BY d.next_attempt_at_ms LIMIT ?"
# PostgreSQL: unclaimed (or expired, or our own) due rows, locked so a concurrent pass skips them.
_CLAIM_SQL = (f"{_DUE_FROM} AND (d.claimed_until_ms IS NULL OR d.claimed_until_ms <= ? OR d.claimed_by = ?)"
              " ORDER BY d.next_attempt_at_ms LIMIT ? FOR UPDATE OF d SKIP LOCKED")


async def due_deliveries(db: Database, *, now_ms: int, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(_DUE_SQL, (now_ms, limit))


def claim_due_deliveries(tx: Tx, *, now_ms: int, limit: int, owner: str, claimed_until_ms: int) -> list[sqlite3.Row]:
    """PostgreSQL (several instances): the due deliveries no other instance holds, claimed for
    `owner` until `claimed_until_ms` (a short lease: a dead instance's claims come back then). Rows
    another pass has locked are skipped, not waited for; recording an answer ends the claim."""
    assert tx.dialect == "postgresql", "SQLite's one writer needs no claims"
    rows = tx.all(_CLAIM_SQL, (now_ms, now_ms, owner, limit))
    if rows:
        tx.executemany("UPDATE webhook_deliveries SET claimed_by = ?, claimed_until_ms = ? WHERE id = ?",
                       [(owner, claimed_until_ms, row["id"]) for row in rows])
    return rows


_DELIVERY_SQL = (
    "SELECT d.*, e.type AS event_type FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id"
)


def get_delivery_tx(tx: Tx, *, merchant_id: str, delivery_id: str) -> sqlite3.Row | None:
    return tx.one(f"{_DELIVERY_SQL} WHERE d.id = ? AND d.merchant_id = ?", (delivery_id, merchant_id))


async def get_delivery(db: Database, *, merchant_id: str, delivery_id: str) -> sqlite3.Row | None:
    return await db.fetch_one(f"{_DELIVERY_SQL} WHERE d.id = ? AND d.merchant_id = ?", (delivery_id, merchant_id))


async def list_deliveries(db: Database, *, merchant_id: str, endpoint_id: str | None, event_id: str | None,
                          status: str | None, after_id: str | None, limit: int) -> list[sqlite3.Row]:
    # Only the filters given are in the WHERE clause, so the planner can take the index of the one
    # given (`? IS NULL OR d.status = ?` would walk every delivery of the merchant for a rare status).
    where, params = ["d.merchant_id = ?"], [merchant_id]
    for condition, value in (("d.endpoint_id = ?", endpoint_id), ("d.event_id = ?", event_id), ("d.status = ?", status),
                             ("d.id < ?", after_id)):
        if value is not None:
            where.append(condition)
            params.append(value)
    return await db.fetch_all(f"{_DELIVERY_SQL} WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?", (*params, limit))


def record_success(tx: Tx, *, delivery_id: str, endpoint_id: str, status_code: int, now_ms: int) -> bool:
    cursor = tx.execute(
        "UPDATE webhook_deliveries SET status = 'succeeded', attempts = attempts + 1, next_attempt_at_ms = NULL,"
        " claimed_by = NULL, claimed_until_ms = NULL,"
        " last_status_code = ?, last_error = NULL, delivered_at_ms = ? WHERE id = ? AND status = 'pending'",
        (status_code, now_ms, delivery_id))
    tx.execute("UPDATE webhook_endpoints SET last_succeeded_at_ms = max(coalesce(last_succeeded_at_ms, 0), ?) WHERE id = ?",
               (now_ms, endpoint_id))
    return cursor.rowcount == 1


def record_retry(tx: Tx, *, delivery_id: str, status_code: int | None, error: str, next_attempt_at_ms: int) -> bool:
    cursor = tx.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at_ms = ?, last_status_code = ?,"
        " claimed_by = NULL, claimed_until_ms = NULL,"
        " last_error = ? WHERE id = ? AND status = 'pending'", (next_attempt_at_ms, status_code, error, delivery_id))
    return cursor.rowcount == 1


def record_failure(tx: Tx, *, delivery_id: str, status_code: int | None, error: str, counts_attempt: bool) -> bool:
    cursor = tx.execute(
        "UPDATE webhook_deliveries SET status = 'failed', attempts = attempts + ?, next_attempt_at_ms = NULL,"
        " claimed_by = NULL, claimed_until_ms = NULL,"
        " last_status_code = coalesce(?, last_status_code), last_error = ? WHERE id = ? AND status = 'pending'",
        (int(counts_attempt), status_code, error, delivery_id))
    return cursor.rowcount == 1


def fail_pending_deliveries(tx: Tx, *, endpoint_id: str, error: str) -> int:
    cursor = tx.execute(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at_ms = NULL, last_error = ?"
        " WHERE endpoint_id = ? AND status = 'pending'", (error, endpoint_id))
    return cursor.rowcount


def open_alert_exists(tx: Tx, *, merchant_id: str, kind: str, object_id: str) -> bool:
    return tx.one("SELECT 1 FROM alerts WHERE merchant_id = ? AND kind = ? AND object_id = ? AND resolved_at_ms IS NULL",
                  (merchant_id, kind, object_id)) is not None


def prune_events(tx: Tx, *, created_before_ms: int, limit: int) -> int:
    """Forget final deliveries and their events older than the cutoff (pending ones stay)."""
    doomed = [row[0] for row in tx.all(
        "SELECT id FROM webhook_events e WHERE created_at_ms < ? AND NOT EXISTS"
        " (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.status = 'pending') LIMIT ?",
        (created_before_ms, limit))]
    for event_id in doomed:
        tx.execute("DELETE FROM webhook_deliveries WHERE event_id = ?", (event_id,))
        tx.execute("DELETE FROM webhook_events WHERE id = ?", (event_id,))
    return len(doomed)


# -- deliveries to the game ------------------------------------------------------------------------
def insert_game_delivery(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO deliveries (id, merchant_id, order_id, player_id, status, payload, attempts, next_push_at_ms,"
        " created_at_ms) VALUES (:id, :merchant_id, :order_id, :player_id, 'pending', :payload, 1, :next_push_at_ms,"
        " :created_at_ms)", row)


def delivery_by_order(tx: Tx, *, order_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM deliveries WHERE order_id = ?", (order_id,))


def get_game_delivery_tx(tx: Tx, *, merchant_id: str, delivery_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM deliveries WHERE id = ? AND merchant_id = ?", (delivery_id, merchant_id))


async def get_game_delivery(db: Database, *, merchant_id: str, delivery_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM deliveries WHERE id = ? AND merchant_id = ?", (delivery_id, merchant_id))


async def list_game_deliveries(db: Database, *, merchant_id: str, status: str | None, after_id: str | None,
                               limit: int) -> list[sqlite3.Row]:
    """Oldest first: a game server that polls works through its queue in order."""
    return await db.fetch_all(
        "SELECT * FROM deliveries WHERE merchant_id = ? AND (? IS NULL OR status = ?) AND (? IS NULL OR id > ?)"
        " ORDER BY id LIMIT ?", (merchant_id, status, status, after_id, after_id, limit))


def ack_delivery(tx: Tx, *, delivery_id: str, now_ms: int) -> bool:
    cursor = tx.execute(
        "UPDATE deliveries SET status = 'acknowledged', acknowledged_at_ms = ?, next_push_at_ms = NULL"
        " WHERE id = ? AND status = 'pending'", (now_ms, delivery_id))
    return cursor.rowcount == 1


async def due_game_pushes(db: Database, *, now_ms: int, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT id, merchant_id FROM deliveries WHERE status = 'pending' AND next_push_at_ms <= ? ORDER BY next_push_at_ms LIMIT ?",
        (now_ms, limit))


def mark_game_delivery_pushed(tx: Tx, *, delivery_id: str, pushes: int, next_push_at_ms: int | None) -> None:
    tx.execute("UPDATE deliveries SET attempts = ?, next_push_at_ms = ? WHERE id = ? AND status = 'pending'",
               (pushes, next_push_at_ms, delivery_id))


def mark_game_delivery_alerted(tx: Tx, *, delivery_id: str, now_ms: int) -> None:
    tx.execute("UPDATE deliveries SET alerted_at_ms = ? WHERE id = ?", (now_ms, delivery_id))

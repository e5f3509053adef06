"""Orders, their items, payments, order events and provider callback events."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "claim_payments_to_close",
    "count_created",
    "count_status",
    "created_per_day",
    "fetch_items",
    "fetch_payment",
    "fetch_order",
    "get_order_tx",
    "get_order_view",
    "get_order_view_by_token",
    "get_order_view_tx",
    "get_payment_tx",
    "insert_event",
    "insert_items",
    "insert_order",
    "insert_payment",
    "list_order_events",
    "list_order_views",
    "merchant_ref_taken",
    "order_items_tx",
    "payment_by_provider_ref",
    "payment_by_provider_ref_async",
    "next_pending_expiry_ms",
    "pending_due",
    "purchased_quantity",
    "record_provider_event",
    "set_order_channel",
    "set_order_status",
    "set_provider_event_result",
    "move_payment",
    "set_payment_details",
    "payment_by_refs",
    "acquire_refs",
    "payment_refs_of",
    "request_close",
    "payments_to_close",
    "set_close_state",
]

# One query renders an order with its items and payment, for the writer and the readers alike.
# The item and promotion lists are JSON arrays (text): SQLite's json_group_array over an ordered
# subquery; PostgreSQL's json_agg ordered inside the aggregate (and '[]' for none, as SQLite's).
_ORDER_VIEW_HEAD = (
    "SELECT o.*, p.channel AS p_channel, p.status AS p_status, p.next_action AS p_next_action,"
    " p.failure_code AS p_failure_code,"
)
_ORDER_VIEW_SELECT = {
    "sqlite": _ORDER_VIEW_HEAD
    + " (SELECT json_group_array(json_array(i.product_id, i.sku, i.quantity, i.unit_amount, i.amount))"
    "  FROM (SELECT * FROM order_items WHERE order_id = o.id ORDER BY line) AS i) AS items_json,"
    " (SELECT json_group_array(op.promotion_id) FROM (SELECT promotion_id FROM order_promotions"
    "  WHERE order_id = o.id ORDER BY position) AS op) AS promotions_json"
    " FROM orders o LEFT JOIN payments p ON p.id = o.payment_id",
    "postgresql": _ORDER_VIEW_HEAD
    + " (SELECT coalesce(json_agg(json_build_array(i.product_id, i.sku, i.quantity, i.unit_amount, i.amount)"
    "  ORDER BY i.line), '[]')::text FROM order_items i WHERE i.order_id = o.id) AS items_json,"
    " (SELECT coalesce(json_agg(op.promotion_id ORDER BY op.position), '[]')::text FROM order_promotions op"
    "  WHERE op.order_id = o.id) AS promotions_json"
    " FROM orders o LEFT JOIN payments p ON p.id = o.payment_id",
}


def insert_order(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO orders (id, merchant_id, player_id, status, amount, currency, channel,"
        " merchant_order_ref, metadata, return_url, checkout_token, payment_id, expires_at_ms,"
        " created_at_ms, updated_at_ms, fx, payment_flow, payer_openid) VALUES (:id, :merchant_id, :player_id,"
        " :status, :amount, :currency, :channel, :merchant_order_ref, :metadata, :return_url, :checkout_token,"
        " :payment_id, :expires_at_ms, :created_at_ms, :created_at_ms, :fx, :payment_flow, :payer_openid)",
        row,
    )


def insert_items(tx: Tx, rows: list[tuple]) -> None:
    """Rows of (order_id, line, product_id, sku, quantity, unit_amount, amount, grants)."""
    tx.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def insert_payment(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO payments (id, order_id, merchant_id, channel, status, amount, currency,"
        " provider_ref, next_action, failure_code, created_at_ms, updated_at_ms) VALUES (:id,"
        " :order_id, :merchant_id, :channel, :status, :amount, :currency, NULL, NULL, NULL,"
        " :created_at_ms, :created_at_ms)",
        row,
    )


def insert_event(tx: Tx, *, event_id: str, order_id: str, type: str, from_status: str | None, to_status: str, cause: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO order_events (id, order_id, type, from_status, to_status, cause, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (event_id, order_id, type, from_status, to_status, cause, now_ms),
    )


def merchant_ref_taken(tx: Tx, *, merchant_id: str, ref: str) -> bool:
    return tx.one("SELECT 1 FROM orders WHERE merchant_id = ? AND merchant_order_ref = ?", (merchant_id, ref)) is not None


def purchased_quantity(tx: Tx, *, merchant_id: str, player_id: str, product_id: str, statuses: tuple[str, ...]) -> int:
    marks = ", ".join("?" * len(statuses))
    row = tx.one(
        "SELECT coalesce(sum(i.quantity), 0) AS n FROM orders o JOIN order_items i ON i.order_id = o.id"
        f" WHERE o.merchant_id = ? AND o.player_id = ? AND i.product_id = ? AND o.status IN ({marks})",
        (merchant_id, player_id, product_id, *statuses),
    )
    return row["n"]


def get_order_tx(tx: Tx, *, order_id: str, merchant_id: str | None = None) -> sqlite3.Row | None:
    if merchant_id is None:
        return tx.one("SELECT * FROM orders WHERE id = ?", (order_id,))
    return tx.one("SELECT * FROM orders WHERE id = ? AND merchant_id = ?", (order_id, merchant_id))


def order_items_tx(tx: Tx, order_id: str) -> list[sqlite3.Row]:
    return tx.all("SELECT * FROM order_items WHERE order_id = ? ORDER BY line", (order_id,))


def set_order_status(tx: Tx, *, order_id: str, from_status: str, to_status: str, now_ms: int) -> None:
    cursor = tx.execute(
        "UPDATE orders SET status = ?, updated_at_ms = ? WHERE id = ? AND status = ?",
        (to_status, now_ms, order_id, from_status),
    )
    assert cursor.rowcount == 1, f"order {order_id} was not in status {from_status}"


def set_order_channel(tx: Tx, *, order_id: str, channel: str, now_ms: int) -> None:
    cursor = tx.execute("UPDATE orders SET channel = ?, updated_at_ms = ? WHERE id = ?", (channel, now_ms, order_id))
    assert cursor.rowcount == 1


async def fetch_payment(db: Database, *, payment_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM payments WHERE id = ?", (payment_id,))


def get_payment_tx(tx: Tx, *, payment_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM payments WHERE id = ?", (payment_id,))


def payment_by_provider_ref(tx: Tx, *, channel: str, provider_ref: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM payments WHERE channel = ? AND provider_ref = ?", (channel, provider_ref))


async def payment_by_provider_ref_async(db: Database, *, channel: str, provider_ref: str) -> sqlite3.Row | None:
    return await db.fetch_one(
        "SELECT p.*, o.status AS order_status, o.expires_at_ms, o.return_url, o.player_id, m.name AS merchant_name"
        " FROM payments p JOIN orders o ON o.id = p.order_id JOIN merchants m ON m.id = p.merchant_id"
        " WHERE p.channel = ? AND p.provider_ref = ?",
        (channel, provider_ref),
    )


def move_payment(tx: Tx, *, payment_id: str, from_status: str, to_status: str, now_ms: int,
                 fields: dict | None = None) -> bool:
    """The guarded status write: `... WHERE status = :from`. False (nothing written) when the
    payment is no longer in `from_status`: the caller's event is stale."""
    extra = fields or {}
    assert set(extra) <= {"failure_code", "provider_ref", "next_action", "saved_method_ref"}, set(extra)
    assignments = "".join(f", {name} = :{name}" for name in extra)
    cursor = tx.execute(
        f"UPDATE payments SET status = :to{assignments}, updated_at_ms = :now WHERE id = :id AND status = :from",
        {**extra, "to": to_status, "now": now_ms, "id": payment_id, "from": from_status},
    )
    assert cursor.rowcount <= 1
    return cursor.rowcount == 1


def set_payment_details(tx: Tx, *, payment_id: str, fields: dict, now_ms: int) -> None:
    """Fields that are not the status (which only `move_payment` writes)."""
    assert fields and set(fields) <= {"provider_ref", "next_action", "channel"}, set(fields)
    assignments = ", ".join(f"{name} = :{name}" for name in fields)
    cursor = tx.execute(
        f"UPDATE payments SET {assignments}, updated_at_ms = :now WHERE id = :id",
        {**fields, "now": now_ms, "id": payment_id},
    )
    assert cursor.rowcount == 1


def payment_by_refs(tx: Tx, *, channel: str, refs: list[str]) -> sqlite3.Row | None:
    """The payment that acquired any of `refs` at `channel` (payment_refs)."""
    for ref in refs:
        row = tx.one("SELECT p.* FROM payment_refs r JOIN payments p ON p.id = r.payment_id"
                     " WHERE r.channel = ? AND r.provider_ref = ?", (channel, ref))
        if row is not None:
            return row
    return None


def acquire_refs(tx: Tx, *, channel: str, payment_id: str, refs: list[str], now_ms: int, fresh: bool = False) -> list[str]:
    """Record every id the provider gave this payment; returns the ids another payment holds
    already (an anomaly the caller reports). `fresh`: the ids of a payment the provider just
    created, mostly new, so they are inserted first and read only when one is held already (one
    statement each then); otherwise (a callback names ids the payment mostly holds) read first."""
    clashes = []
    for ref in dict.fromkeys(r for r in refs if r):
        if fresh and tx.execute("INSERT OR IGNORE INTO payment_refs (channel, provider_ref, payment_id, created_at_ms)"
                                " VALUES (?, ?, ?, ?)", (channel, ref, payment_id, now_ms)).rowcount == 1:
            continue
        owner = tx.one("SELECT payment_id FROM payment_refs WHERE channel = ? AND provider_ref = ?", (channel, ref))
        if owner is None:
            tx.execute("INSERT INTO payment_refs (channel, provider_ref, payment_id, created_at_ms) VALUES (?, ?, ?, ?)",
                       (channel, ref, payment_id, now_ms))
        elif owner["payment_id"] != payment_id:
            clashes.append(ref)
    return clashes


def payment_refs_of(tx: Tx, *, payment_id: str) -> list[str]:
    rows = tx.all("SELECT provider_ref FROM payment_refs WHERE payment_id = ? ORDER BY created_at_ms, provider_ref",
                  (payment_id,))
    return [r["provider_ref"] for r in rows]


def request_close(tx: Tx, *, payment_id: str, now_ms: int) -> None:
    """Ask the closer job to close this payment at its provider (its order ended unpaid)."""
    tx.execute("UPDATE payments SET close_state = 'pending', updated_at_ms = ? WHERE id = ? AND close_state IS NULL",
               (now_ms, payment_id))


async def payments_to_close(db: Database, *, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM payments WHERE close_state = 'pending' ORDER BY updated_at_ms LIMIT ?",
                              (limit,))


def claim_payments_to_close(tx: Tx, *, now_ms: int, limit: int, owner: str, claimed_until_ms: int) -> list[sqlite3.Row]:
    """PostgreSQL (several instances): `payments_to_close` without those another janitor holds,
    claimed for `owner` (store/channels.py claims; locked rows are skipped, not waited for)."""
    assert tx.dialect == "postgresql", "SQLite's one writer needs no claims"
    rows = tx.all("SELECT * FROM payments p WHERE close_state = 'pending'"
                  " AND (p.claimed_until_ms IS NULL OR p.claimed_until_ms <= ? OR p.claimed_by = ?)"
                  " ORDER BY updated_at_ms LIMIT ? FOR UPDATE SKIP LOCKED", (now_ms, owner, limit))
    if rows:
        tx.executemany("UPDATE payments SET claimed_by = ?, claimed_until_ms = ? WHERE id = ?",
                       [(owner, claimed_until_ms, row["id"]) for row in rows])
    return rows


def set_close_state(tx: Tx, *, payment_id: str, state: str, now_ms: int) -> None:
    assert state in ("pending", "done", "failed")
    tx.execute("UPDATE payments SET close_state = ?, close_attempts = close_attempts + 1, updated_at_ms = ?"
               " WHERE id = ?", (state, now_ms, payment_id))


def record_provider_event(tx: Tx, *, merchant_id: str, channel: str, event_id: str, kind: str, payment_id: str | None,
                          now_ms: int) -> bool:
    """Insert the event once per merchant; False when this merchant saw (channel, event_id) before."""
    cursor = tx.execute(
        "INSERT INTO provider_events (merchant_id, channel, event_id, kind, payment_id, result, received_at_ms)"
        " VALUES (?, ?, ?, ?, ?, 'received', ?) ON CONFLICT DO NOTHING",
        (merchant_id, channel, event_id, kind, payment_id, now_ms),
    )
    return cursor.rowcount == 1


def set_provider_event_result(tx: Tx, *, merchant_id: str, channel: str, event_id: str, result: str) -> None:
    cursor = tx.execute("UPDATE provider_events SET result = ? WHERE merchant_id = ? AND channel = ? AND event_id = ?",
                        (result, merchant_id, channel, event_id))
    assert cursor.rowcount == 1


def get_order_view_tx(tx: Tx, *, order_id: str) -> sqlite3.Row | None:
    return tx.one(f"{_ORDER_VIEW_SELECT[tx.dialect]} WHERE o.id = ?", (order_id,))


async def get_order_view(db: Database, *, merchant_id: str, order_id: str) -> sqlite3.Row | None:
    return await db.fetch_one(f"{_ORDER_VIEW_SELECT[db.dialect]} WHERE o.id = ? AND o.merchant_id = ?", (order_id, merchant_id))


async def get_order_view_by_token(db: Database, *, checkout_token: str) -> sqlite3.Row | None:
    return await db.fetch_one(f"{_ORDER_VIEW_SELECT[db.dialect]} WHERE o.checkout_token = ?", (checkout_token,))


async def list_order_views(
    db: Database, *, merchant_id: str, after_id: str | None, limit: int, status: str | None, player_id: str | None
) -> list[sqlite3.Row]:
    # Only the filters given are in the WHERE clause: `? IS NULL OR o.status = ?` would keep the
    # planner off orders_status and orders_player, and a rare status would walk every order.
    where, params = ["o.merchant_id = ?"], [merchant_id]
    for condition, value in (("o.id < ?", after_id), ("o.status = ?", status), ("o.player_id = ?", player_id)):
        if value is not None:
            where.append(condition)
            params.append(value)
    return await db.fetch_all(f"{_ORDER_VIEW_SELECT[db.dialect]} WHERE {' AND '.join(where)} ORDER BY o.id DESC LIMIT ?",
                              (*params, limit))


async def count_created(db: Database, *, merchant_id: str, from_ms: int, to_ms: int, statuses: tuple[str, ...]) -> sqlite3.Row:
    """Orders created in [from, to) (`orders`), and how many of them are now in one of `statuses`
    (`in_statuses`)."""
    assert statuses
    marks = ", ".join("?" * len(statuses))
    return await db.fetch_one(
        f"SELECT count(*) AS orders, coalesce(sum(CASE WHEN status IN ({marks}) THEN 1 ELSE 0 END), 0) AS in_statuses"
        " FROM orders WHERE merchant_id = ? AND created_at_ms >= ? AND created_at_ms < ?",
        (*statuses, merchant_id, from_ms, to_ms))


async def created_per_day(db: Database, *, merchant_id: str, from_ms: int, to_ms: int, day_ms: int) -> dict[int, int]:
    """Orders created in [from, to), per `day_ms` step from `from_ms` (0 = the first day)."""
    rows = await db.fetch_all(
        "SELECT (created_at_ms - ?) / ? AS day, count(*) AS orders FROM orders"
        " WHERE merchant_id = ? AND created_at_ms >= ? AND created_at_ms < ? GROUP BY day",
        (from_ms, day_ms, merchant_id, from_ms, to_ms))
    return {row["day"]: row["orders"] for row in rows}


async def count_status(db: Database, *, merchant_id: str, status: str, limit: int) -> int:
    """How many of the merchant's orders are in `status`, counting no further than `limit`."""
    row = await db.fetch_one("SELECT count(*) AS n FROM (SELECT 1 FROM orders WHERE merchant_id = ? AND status = ?"
                             " LIMIT ?) AS limited", (merchant_id, status, limit))
    return row["n"]


async def fetch_order(db: Database, *, order_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM orders WHERE id = ?", (order_id,))


async def fetch_items(db: Database, *, order_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM order_items WHERE order_id = ? ORDER BY line", (order_id,))


async def list_order_events(db: Database, *, order_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM order_events WHERE order_id = ? ORDER BY id", (order_id,))


async def pending_due(db: Database, *, now_ms: int, limit: int) -> list[str]:
    rows = await db.fetch_all(
        "SELECT id FROM orders WHERE status = 'pending' AND expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?",
        (now_ms, limit),
    )
    return [row["id"] for row in rows]


async def next_pending_expiry_ms(db: Database) -> int | None:
    """When the next pending order's reservation runs out (the expiry job's due time)."""
    row = await db.fetch_one("SELECT expires_at_ms AS at_ms FROM orders WHERE status = 'pending' ORDER BY expires_at_ms LIMIT 1")
    return row["at_ms"] if row else None

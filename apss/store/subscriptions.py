"""Subscriptions, the orders of their periods, their events, and the figures of their report."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "due_subscriptions",
    "fetch_subscription",
    "fetch_subscription_by_order",
    "get_subscription_tx",
    "insert_event",
    "insert_subscription",
    "insert_subscription_order",
    "last_period_index_tx",
    "list_events",
    "list_subscriptions",
    "move_subscription",
    "payments_of_order_tx",
    "report_figures",
    "set_order_payment",
    "set_order_subscription",
    "store_subscription_tx",
    "subscription_order_of_tx",
    "subscription_order_tx",
    "update_subscription",
]

_FIELDS = {
    "product_id", "next_product_id", "channel", "amount", "period_index", "current_period_start_ms", "current_period_end_ms",
    "cancel_at_period_end", "canceled_at_ms", "activated_at_ms", "method_payment_id", "latest_order_id",
    "first_failure_ms", "retries", "charge_attempts", "next_charge_at_ms", "uncounted_failure_code",
    "store_signed_at_ms",
}


def insert_subscription(tx: Tx, row: dict) -> None:
    """A web subscription, or (with `store`, `store_original_transaction_id`, `store_environment`)
    an app store's (migration 0035)."""
    tx.execute(
        "INSERT INTO subscriptions (id, merchant_id, player_id, product_id, currency, amount, channel, fallback_channel,"
        " metadata, status, billing, anchor_ms, period_index, current_period_start_ms, current_period_end_ms,"
        " cancel_at_period_end, latest_order_id, created_at_ms, updated_at_ms, store, store_original_transaction_id,"
        " store_environment) VALUES (:id, :merchant_id, :player_id,"
        " :product_id, :currency, :amount, :channel, :fallback_channel, :metadata, :status, :billing, :anchor_ms, 0,"
        " :current_period_start_ms, :current_period_end_ms, 0, :latest_order_id, :created_at_ms, :created_at_ms,"
        " :store, :store_original_transaction_id, :store_environment)",
        {"store": None, "store_original_transaction_id": None, "store_environment": None, **row},
    )


def store_subscription_tx(tx: Tx, *, merchant_id: str, store: str, original_transaction_id: str) -> sqlite3.Row | None:
    """The newest subscription of a store chain (a chain resubscribed after it ended has a new one)."""
    return tx.one("SELECT * FROM subscriptions WHERE merchant_id = ? AND store = ? AND store_original_transaction_id = ?"
                  " ORDER BY created_at_ms DESC, id DESC LIMIT 1", (merchant_id, store, original_transaction_id))


def last_period_index_tx(tx: Tx, *, subscription_id: str) -> int:
    """The highest period index of the subscription's orders (a store's late renewal takes the next)."""
    row = tx.one("SELECT max(period_index) AS n FROM subscription_orders WHERE subscription_id = ?", (subscription_id,))
    return row["n"] if row is not None and row["n"] is not None else 0


def get_subscription_tx(tx: Tx, *, subscription_id: str, merchant_id: str | None = None) -> sqlite3.Row | None:
    if merchant_id is None:
        return tx.one("SELECT * FROM subscriptions WHERE id = ?", (subscription_id,))
    return tx.one("SELECT * FROM subscriptions WHERE id = ? AND merchant_id = ?", (subscription_id, merchant_id))


def move_subscription(tx: Tx, *, subscription_id: str, from_status: str, to_status: str, fields: dict, now_ms: int) -> bool:
    """The guarded status write: False when the subscription is no longer in `from_status`."""
    assert set(fields) <= _FIELDS, set(fields) - _FIELDS
    assignments = "".join(f", {name} = :{name}" for name in fields)
    cursor = tx.execute(
        f"UPDATE subscriptions SET status = :to_status, updated_at_ms = :now{assignments}"
        " WHERE id = :id AND status = :from_status",
        {**fields, "to_status": to_status, "from_status": from_status, "now": now_ms, "id": subscription_id},
    )
    return cursor.rowcount == 1


def update_subscription(tx: Tx, *, subscription_id: str, fields: dict, now_ms: int) -> None:
    """Fields that are not the status (the status moves only through move_subscription)."""
    assert fields and set(fields) <= _FIELDS, set(fields) - _FIELDS
    assignments = ", ".join(f"{name} = :{name}" for name in fields)
    cursor = tx.execute(f"UPDATE subscriptions SET {assignments}, updated_at_ms = :now WHERE id = :id",
                        {**fields, "now": now_ms, "id": subscription_id})
    assert cursor.rowcount == 1


def insert_subscription_order(tx: Tx, row: dict) -> None:
    """UNIQUE (subscription_id, period_index, kind): one renewal order per period, whatever runs twice."""
    tx.execute(
        "INSERT INTO subscription_orders (order_id, subscription_id, kind, period_index, period_start_ms, period_end_ms,"
        " product_id, created_at_ms) VALUES (:order_id, :subscription_id, :kind, :period_index, :period_start_ms,"
        " :period_end_ms, :product_id, :created_at_ms)",
        row,
    )


def subscription_order_tx(tx: Tx, *, subscription_id: str, period_index: int, kind: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM subscription_orders WHERE subscription_id = ? AND period_index = ? AND kind = ?",
                  (subscription_id, period_index, kind))


def subscription_order_of_tx(tx: Tx, *, order_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM subscription_orders WHERE order_id = ?", (order_id,))


def set_order_subscription(tx: Tx, *, order_id: str, subscription_id: str, expires_at_ms: int) -> None:
    cursor = tx.execute("UPDATE orders SET subscription_id = ?, expires_at_ms = ? WHERE id = ?",
                        (subscription_id, expires_at_ms, order_id))
    assert cursor.rowcount == 1


def set_order_payment(tx: Tx, *, order_id: str, payment_id: str, channel: str, now_ms: int) -> None:
    """A retry charges the period's order again: a new payment becomes the order's current one."""
    cursor = tx.execute("UPDATE orders SET payment_id = ?, channel = ?, updated_at_ms = ? WHERE id = ? AND status = 'pending'",
                        (payment_id, channel, now_ms, order_id))
    assert cursor.rowcount == 1


def payments_of_order_tx(tx: Tx, *, order_id: str) -> list[sqlite3.Row]:
    return tx.all("SELECT * FROM payments WHERE order_id = ? ORDER BY id", (order_id,))


def insert_event(tx: Tx, *, event_id: str, subscription_id: str, type: str, from_status: str | None, to_status: str,
                 cause: str, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO subscription_events (id, subscription_id, type, from_status, to_status, cause, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (event_id, subscription_id, type, from_status, to_status, cause, now_ms),
    )


async def fetch_subscription(db: Database, *, merchant_id: str, subscription_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM subscriptions WHERE id = ? AND merchant_id = ?", (subscription_id, merchant_id))


async def fetch_subscription_by_order(db: Database, *, merchant_id: str, order_id: str) -> sqlite3.Row | None:
    return await db.fetch_one(
        "SELECT s.* FROM subscriptions s JOIN subscription_orders so ON so.subscription_id = s.id"
        " WHERE so.order_id = ? AND s.merchant_id = ?", (order_id, merchant_id))


async def list_subscriptions(db: Database, *, merchant_id: str, after_id: str | None, limit: int, status: str | None,
                             player_id: str | None) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM subscriptions WHERE merchant_id = ? AND (? IS NULL OR id < ?) AND (? IS NULL OR status = ?)"
        " AND (? IS NULL OR player_id = ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, status, status, player_id, player_id, limit),
    )


async def list_events(db: Database, *, subscription_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM subscription_events WHERE subscription_id = ? ORDER BY created_at_ms, id",
                              (subscription_id,))


async def due_subscriptions(db: Database, *, now_ms: int, limit: int) -> list[str]:
    rows = await db.fetch_all(
        "SELECT id FROM subscriptions WHERE next_charge_at_ms IS NOT NULL AND next_charge_at_ms <= ?"
        " AND status IN ('active', 'past_due') AND store IS NULL ORDER BY next_charge_at_ms LIMIT ?", (now_ms, limit))
    return [row["id"] for row in rows]


async def report_figures(db: Database, *, merchant_id: str, from_ms: int, to_ms: int) -> dict[str, list[sqlite3.Row]]:
    """Raw figures of the subscription report, measured from the data (services/subscriptions computes the rates)."""
    live = await db.fetch_all(
        "SELECT status, currency, amount, billing FROM subscriptions WHERE merchant_id = ? AND status IN ('active', 'past_due')",
        (merchant_id,))
    # Live at the window's start: activated before it and not canceled before it.
    at_start = await db.fetch_all(
        "SELECT count(*) AS n FROM subscriptions WHERE merchant_id = ? AND activated_at_ms IS NOT NULL AND activated_at_ms < ?"
        " AND (canceled_at_ms IS NULL OR canceled_at_ms >= ?)", (merchant_id, from_ms, from_ms))
    churned = await db.fetch_all(
        "SELECT count(*) AS n FROM subscriptions WHERE merchant_id = ? AND activated_at_ms IS NOT NULL"
        " AND activated_at_ms < ? AND canceled_at_ms >= ? AND canceled_at_ms < ?", (merchant_id, from_ms, from_ms, to_ms))
    # Renewal orders settled in the window: paid (how many charge attempts it took) or failed.
    renewals = await db.fetch_all(
        "SELECT o.status, o.currency, o.amount, (SELECT count(*) FROM payments p WHERE p.order_id = o.id) AS payments,"
        " (SELECT p.id FROM payments p WHERE p.order_id = o.id AND p.status = 'succeeded' ORDER BY p.id LIMIT 1) AS paid_by,"
        " (SELECT min(p.id) FROM payments p WHERE p.order_id = o.id) AS first_payment"
        " FROM subscription_orders so JOIN orders o ON o.id = so.order_id"
        " WHERE o.merchant_id = ? AND so.kind = 'renewal' AND o.updated_at_ms >= ? AND o.updated_at_ms < ?"
        " AND o.status NOT IN ('pending')", (merchant_id, from_ms, to_ms))
    return {"live": live, "at_start": at_start, "churned": churned, "renewals": renewals}

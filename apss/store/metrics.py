"""Counts for /metrics, read at scrape time on a reader connection: one GROUP BY each, over every
merchant (a platform's view: no merchant label). Orders and payments are counted by scanning their
tables (no index of their own: an index on a hot table costs every order write); the webhook
backlog and open alerts are small."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database

__all__ = ["alerts_open", "orders_by_status", "payments_by_channel_status", "webhook_backlog"]


async def orders_by_status(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT status, count(*) AS n FROM orders GROUP BY status")


async def payments_by_channel_status(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT channel, status, count(*) AS n FROM payments GROUP BY channel, status")


async def webhook_backlog(db: Database) -> sqlite3.Row:
    """Merchant webhook deliveries still to send (the outbox's pending rows, through their partial
    index) and when the oldest was created (None: none pending)."""
    row = await db.fetch_one("SELECT count(*) AS n, min(created_at_ms) AS oldest_ms FROM webhook_deliveries"
                             " WHERE status = 'pending'")
    assert row is not None
    return row


async def alerts_open(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT severity, count(*) AS n FROM alerts WHERE resolved_at_ms IS NULL GROUP BY severity")

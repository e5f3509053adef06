"""Alerts: anomalies that need a person (amount mismatch, late payment without stock...)."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = ["alerted", "get_alert_tx", "insert_alert", "list_alerts", "resolve_alert"]


def insert_alert(
    tx: Tx, *, alert_id: str, merchant_id: str | None, kind: str, severity: str, object_id: str | None,
    message: str, now_ms: int,
) -> None:
    tx.execute(
        "INSERT INTO alerts (id, merchant_id, kind, severity, object_id, message, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (alert_id, merchant_id, kind, severity, object_id, message, now_ms),
    )


async def list_alerts(db: Database, *, merchant_id: str, after_id: str | None, limit: int,
                      resolved: bool | None, kind: str | None) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM alerts WHERE merchant_id = ? AND (? IS NULL OR id < ?)"
        " AND (? IS NULL OR (CASE WHEN resolved_at_ms IS NULL THEN 0 ELSE 1 END) = ?) AND (? IS NULL OR kind = ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, resolved, resolved, kind, kind, limit),
    )


def get_alert_tx(tx: Tx, *, alert_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM alerts WHERE id = ?", (alert_id,))


def resolve_alert(tx: Tx, *, merchant_id: str, alert_id: str, now_ms: int) -> sqlite3.Row | None:
    """Mark resolved (once; resolving again keeps the first time). None if no such alert."""
    tx.execute("UPDATE alerts SET resolved_at_ms = coalesce(resolved_at_ms, ?) WHERE id = ? AND merchant_id = ?",
               (now_ms, alert_id, merchant_id))
    return tx.one("SELECT * FROM alerts WHERE id = ? AND merchant_id = ?", (alert_id, merchant_id))


def alerted(tx: Tx, *, object_id: str, kind: str) -> bool:
    """Has an alert of this kind been raised for this object (re-checked inside the write)?"""
    return tx.one("SELECT 1 FROM alerts WHERE object_id = ? AND kind = ? LIMIT 1", (object_id, kind)) is not None

"""Alerts: anomalies that need a person (amount mismatch, late payment without stock, a payment
the provider never resolved...). Raised inside the transaction that found them."""

from __future__ import annotations

import msgspec

from apss.clock import Clock, format_rfc3339
from apss.errors import NotFound
from apss.services.paging import page_of
from apss.store import alerts as store
from apss.store.db import Database, Row, Tx

__all__ = ["AlertList", "AlertView", "Alerts", "alert_view"]


class AlertView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: str
    severity: str
    object_id: str | None
    message: str
    resolved: bool
    created_at: str
    resolved_at: str | None


class AlertList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[AlertView]
    has_more: bool
    next_cursor: str | None


def alert_view(row: Row) -> AlertView:
    return AlertView(id=row["id"], kind=row["kind"], severity=row["severity"], object_id=row["object_id"],
                     message=row["message"], resolved=row["resolved_at_ms"] is not None,
                     created_at=format_rfc3339(row["created_at_ms"]),
                     resolved_at=format_rfc3339(row["resolved_at_ms"]) if row["resolved_at_ms"] else None)


class Alerts:
    def __init__(self, *, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def list(self, *, merchant_id: str, after_id: str | None, limit: int, resolved: bool | None,
                   kind: str | None) -> tuple[list[AlertView], bool]:
        rows = await store.list_alerts(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1,
                                       resolved=resolved, kind=kind)
        return page_of(rows, limit, alert_view)

    async def resolve(self, *, merchant_id: str, alert_id: str) -> AlertView:
        def transaction(tx: Tx) -> AlertView:
            row = store.resolve_alert(tx, merchant_id=merchant_id, alert_id=alert_id, now_ms=self._clock.now_ms())
            if row is None:
                raise NotFound(f"No such alert: '{alert_id}'", param="id")
            return alert_view(row)

        return await self._db.write(transaction)

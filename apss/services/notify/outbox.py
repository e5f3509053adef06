"""The event sink behind `tx.emit`: renders the object an event is about and writes the event
to the merchant webhook outbox, in the same transaction as the change (apss/services/notify/merchant_webhooks.py
delivers it after COMMIT). Nothing is rendered for a merchant without enabled endpoints, and an
order's view is rendered once per transaction function while only its status moves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apss.services.notify.alerts import alert_view
from apss.services.notify.merchant_webhooks import WebhookEvents
from apss.services.refunds.refunds import refund_view
from apss.services.views import keep_order_view, kept_order_view, order_view
from apss.store import alerts, orders, refunds
from apss.store import webhooks as webhook_store
from apss.store.db import Tx

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, *, events: WebhookEvents, public_url: str) -> None:
        self._events = events
        self._renderers: dict[str, Callable[[Tx, str], Any]] = {
            "order": lambda tx, oid: kept_order_view(tx, oid) or order_view(orders.get_order_view_tx(tx, order_id=oid),
                                                                            public_url=public_url),
            "refund": lambda tx, rid: refund_view(refunds.get_refund_tx(tx, refund_id=rid)),
            "alert": lambda tx, aid: alert_view(alerts.get_alert_tx(tx, alert_id=aid)),
        }

    def register(self, kind: str, renderer: Callable[[Tx, str], Any]) -> None:
        assert kind not in self._renderers, f"renderer for {kind!r} registered twice"
        self._renderers[kind] = renderer

    def sink(self, tx: Tx, merchant_id: str, type: str, kind: str, object_id: str) -> None:
        if not webhook_store.enabled_endpoints_tx(tx, merchant_id=merchant_id):
            return
        data = self._renderers[kind](tx, object_id)
        self._events.emit(tx, merchant_id=merchant_id, type=type, data=data)
        if kind == "order":  # kept past the event's own rows: the order's next move reuses it (lifecycle.move)
            keep_order_view(tx, data)

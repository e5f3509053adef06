"""Delivery to the game as a first-class step: for goods the game itself hands over.

When such an order is paid, `create_delivery` (called in the paid transaction) records a
`dlv_...` delivery and emits `delivery.pending` (pushed by webhook). A game server behind NAT
polls `GET /v1/deliveries?status=pending` instead. The game acknowledges with
`POST /v1/deliveries/{id}/ack` (idempotent); the first ack calls `on_ack(tx, order_id)` in the
same transaction, which moves the order delivering -> fulfilled. Unacknowledged deliveries are
pushed again with backoff (`push_due`, a scheduler job), and one left unacknowledged for
`alert_after_s` raises a `paid_not_delivered` alert.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

from apss.clock import Clock, format_rfc3339
from apss.domain.catalog import Grant
from apss.errors import NotFound
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.notify.merchant_webhooks import Webhooks
from apss.services.orders.lifecycle import paid_not_delivered
from apss.services.paging import page_of
from apss.store import webhooks as store
from apss.store.db import Database, Row, Tx

__all__ = ["Deliveries", "DeliveryItemView", "DeliveryList", "DeliveryView"]

_HOUR_S = 3600


class DeliveryItemView(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    quantity: int
    grants: list[Grant]  # what one unit grants


class DeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    order_id: str
    player_id: str
    status: Literal["pending", "acknowledged"]
    items: list[DeliveryItemView]
    attempts: int  # pushes (delivery.pending events) so far
    created_at: str
    acknowledged_at: str | None


class DeliveryList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[DeliveryView]
    has_more: bool
    next_cursor: str | None


_items_decoder = msgspec.json.Decoder(list[DeliveryItemView])
_grants_decoder = msgspec.json.Decoder(list[Grant])
_encoder = msgspec.json.Encoder()


def _view(row: Row) -> DeliveryView:
    assert row["status"] in ("pending", "acknowledged")
    assert (row["status"] == "acknowledged") == (row["acknowledged_at_ms"] is not None)
    return DeliveryView(
        id=row["id"], order_id=row["order_id"], player_id=row["player_id"], status=row["status"],
        items=_items_decoder.decode(row["payload"]), attempts=row["attempts"],
        created_at=format_rfc3339(row["created_at_ms"]),
        acknowledged_at=format_rfc3339(row["acknowledged_at_ms"]) if row["acknowledged_at_ms"] else None)


def _no_order_move(tx: Tx, order_id: str) -> None:
    """The default `on_ack` until app.py wires the order move."""


class Deliveries:
    def __init__(
        self, *, db: Database, clock: Clock, webhooks: Webhooks, idempotency: Idempotency,
        on_ack: Callable[[Tx, str], None] = _no_order_move,
        push_base_s: float = 300.0,
        push_cap_s: float = 6 * _HOUR_S,
        pushes_max: int = 10,
        alert_after_s: float = _HOUR_S,
        batch_max: int = 200,
    ) -> None:
        assert 0 < push_base_s <= push_cap_s and pushes_max >= 1 and alert_after_s > 0 and batch_max >= 1
        self._db = db
        self._clock = clock
        self._webhooks = webhooks
        self._idempotency = idempotency
        self.on_ack = on_ack
        self._push_base_ms = int(push_base_s * 1000)
        self._push_cap_ms = int(push_cap_s * 1000)
        self._pushes_max = pushes_max
        self._alert_after_ms = int(alert_after_s * 1000)
        self._batch_max = batch_max

    # -- in the paid transaction ---------------------------------------------------------------
    def create_delivery(self, tx: Tx, *, order_row: Row, items_rows: list[Row], now_ms: int) -> str:
        """Record the delivery of a paid order and push it (`delivery.pending`); once per order."""
        assert items_rows and all(item["order_id"] == order_row["id"] for item in items_rows)
        existing = store.delivery_by_order(tx, order_id=order_row["id"])
        if existing is not None:
            return existing["id"]
        items = [DeliveryItemView(sku=item["sku"], quantity=item["quantity"], grants=_grants_decoder.decode(item["grants"]))
                 for item in items_rows]
        delivery_id = new_id("dlv")
        store.insert_game_delivery(tx, {
            "id": delivery_id, "merchant_id": order_row["merchant_id"], "order_id": order_row["id"],
            "player_id": order_row["player_id"], "payload": _encoder.encode(items).decode(),
            "next_push_at_ms": self._next_visit_ms(created_at_ms=now_ms, pushes=1, alerted=False),
            "created_at_ms": now_ms,
        })
        row = store.get_game_delivery_tx(tx, merchant_id=order_row["merchant_id"], delivery_id=delivery_id)
        self._webhooks.emit(tx, merchant_id=order_row["merchant_id"], type="delivery.pending", data=_view(row))
        return delivery_id

    # -- the game ----------------------------------------------------------------------------------
    def _ack_tx(self, tx: Tx, *, merchant_id: str, delivery_id: str) -> DeliveryView:
        row = store.get_game_delivery_tx(tx, merchant_id=merchant_id, delivery_id=delivery_id)
        if row is None:
            raise NotFound(f"No such delivery: '{delivery_id}'", param="id")
        if row["status"] == "pending":
            if not store.ack_delivery(tx, delivery_id=delivery_id, now_ms=self._clock.now_ms()):
                raise RuntimeError(f"delivery {delivery_id} was pending but could not be acknowledged")
            self.on_ack(tx, row["order_id"])
            row = store.get_game_delivery_tx(tx, merchant_id=merchant_id, delivery_id=delivery_id)
        assert row["status"] == "acknowledged"
        return _view(row)

    async def ack(self, *, merchant_id: str, delivery_id: str) -> DeliveryView:
        """Acknowledge (idempotent: a second ack answers the same delivery and moves nothing)."""
        return await self._db.write(lambda tx: self._ack_tx(tx, merchant_id=merchant_id, delivery_id=delivery_id))

    async def ack_request(self, *, merchant_id: str, delivery_id: str, idem: IdempotencyRequest | None) -> Outcome:
        """`ack` for the API, with the Idempotency-Key rule of API.md."""
        return await self._idempotency.run(
            self._db, merchant_id=merchant_id, request=idem, success_status=200,
            fn=lambda tx: self._ack_tx(tx, merchant_id=merchant_id, delivery_id=delivery_id))

    async def get(self, *, merchant_id: str, delivery_id: str) -> DeliveryView:
        row = await store.get_game_delivery(self._db, merchant_id=merchant_id, delivery_id=delivery_id)
        if row is None:
            raise NotFound(f"No such delivery: '{delivery_id}'", param="id")
        return _view(row)

    async def list(self, *, merchant_id: str, status: str | None, limit: int,
                   cursor: str | None) -> tuple[list[DeliveryView], bool]:
        """Oldest first, so that a polling game server works through its queue in order."""
        assert status in (None, "pending", "acknowledged") and limit >= 1
        rows = await store.list_game_deliveries(self._db, merchant_id=merchant_id, status=status, after_id=cursor,
                                                limit=limit + 1)
        return page_of(rows, limit, _view)

    # -- re-sends and the paid-but-not-delivered alert (a scheduler job) -----------------------------
    def _push_due_at_ms(self, *, created_at_ms: int, pushes: int) -> int:
        """When push number `pushes + 1` is due: the gaps double from push_base_s up to push_cap_s."""
        assert pushes >= 1
        return created_at_ms + sum(min(self._push_cap_ms, self._push_base_ms * 2 ** i) for i in range(pushes))

    def _next_visit_ms(self, *, created_at_ms: int, pushes: int, alerted: bool) -> int | None:
        """The next push, or the alert time if that comes first; None when neither is left."""
        visits = []
        if pushes < self._pushes_max:
            visits.append(self._push_due_at_ms(created_at_ms=created_at_ms, pushes=pushes))
        if not alerted:
            visits.append(created_at_ms + self._alert_after_ms)
        return min(visits) if visits else None

    async def push_due(self) -> int:
        """Push again every unacknowledged delivery that is due; returns how many were pushed."""
        due = await store.due_game_pushes(self._db, now_ms=self._clock.now_ms(), limit=self._batch_max)
        if not due:
            return 0
        return await self._db.write(lambda tx: sum(self._visit(tx, row) for row in due))

    def _visit(self, tx: Tx, due: Row) -> int:
        row = store.get_game_delivery_tx(tx, merchant_id=due["merchant_id"], delivery_id=due["id"])
        now_ms = self._clock.now_ms()
        if row["status"] != "pending" or row["next_push_at_ms"] is None or row["next_push_at_ms"] > now_ms:
            return 0  # acknowledged (or visited) since it was read
        alerted = row["alerted_at_ms"] is not None
        if not alerted and now_ms >= row["created_at_ms"] + self._alert_after_ms:
            paid_not_delivered(tx, merchant_id=row["merchant_id"], order_id=row["order_id"], now_ms=now_ms,
                               detail=f"the game has not acknowledged delivery {row['id']} after "
                                      f"{self._alert_after_ms // 60_000} min")
            store.mark_game_delivery_alerted(tx, delivery_id=row["id"], now_ms=now_ms)
            alerted = True
        pushes, pushed = row["attempts"], 0
        if pushes < self._pushes_max and now_ms >= self._push_due_at_ms(created_at_ms=row["created_at_ms"], pushes=pushes):
            self._webhooks.emit(tx, merchant_id=row["merchant_id"], type="delivery.pending", data=_view(row))
            pushes, pushed = pushes + 1, 1
        store.mark_game_delivery_pushed(tx, delivery_id=row["id"], pushes=pushes, next_push_at_ms=self._next_visit_ms(
            created_at_ms=row["created_at_ms"], pushes=pushes, alerted=alerted))
        return pushed

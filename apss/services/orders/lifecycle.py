"""Moves of an order through the state machine, with their stock and payment side effects.

Every function here runs inside a write transaction (`tx`) and does its checks before its first
write. Stock follows the order: reserved at creation, taken when paid, released when the order
ends unpaid (expired, canceled, failed).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from apss.domain.catalog import (
    CurrencyGrant,
    EntitlementGrant,
    GameGrant,
    Grant,
    ItemGrant,
    MembershipGrant,
)
from apss.domain.orders import OrderEvent, OrderStatus, transition
from apss.domain.payments import PaymentStatus, payment_transition
from apss.errors import InvalidTransition
from apss.ids import new_id
from apss.services.subscriptions import periods as subscription_periods
from apss.services.views import keep_order_view, kept_order_view
from apss.store import alerts, catalog, orders, players
from apss.store import promotions as promotion_store
from apss.store.db import Row, Tx

__all__ = ["deliver", "deliver_acknowledged", "deliver_paid", "end_unpaid", "move", "move_payment", "paid_not_delivered", "pay", "raise_alert", "stock_available_again"]

_grants_decoder = msgspec.json.Decoder(list[Grant])
_DAY_MS = 86_400_000


def move(tx: Tx, order: Row, event: OrderEvent, *, cause: str, now_ms: int) -> OrderStatus:
    """Apply `event` to the order (InvalidTransition if illegal) and record it with its cause."""
    current = OrderStatus(order["status"])
    target = transition(current, event)
    view = kept_order_view(tx, order["id"])  # rendered for the webhook of a move just before this one
    orders.set_order_status(tx, order_id=order["id"], from_status=current.value, to_status=target.value, now_ms=now_ms)
    orders.insert_event(tx, event_id=new_id("evt"), order_id=order["id"], type=f"order.{target.value}",
                        from_status=current.value, to_status=target.value, cause=cause, now_ms=now_ms)
    if view is not None:  # this move changed only the status: the event's webhook needs no new render
        keep_order_view(tx, msgspec.structs.replace(view, status=target.value))
    tx.emit(merchant_id=order["merchant_id"], type=f"order.{target.value}", kind="order", object_id=order["id"])
    return target


def _moved(order: Row, status: OrderStatus, *, now_ms: int) -> Row:
    """The order row as `move` (orders.set_order_status) leaves it, without reading it again."""
    return {**order, "status": status.value, "updated_at_ms": now_ms}


def end_unpaid(tx: Tx, order: Row, event: OrderEvent, *, cause: str, now_ms: int) -> None:
    """Expire, cancel or fail a pending order: release its reservation, cancel its payment."""
    assert event in (OrderEvent.EXPIRE, OrderEvent.CANCEL, OrderEvent.PAYMENT_FAILED)
    transition(OrderStatus(order["status"]), event)  # check before writing
    items = orders.order_items_tx(tx, order["id"])
    move(tx, order, event, cause=cause, now_ms=now_ms)
    for item in items:
        catalog.release_reserved(tx, product_id=item["product_id"], quantity=item["quantity"])
    promotion_store.release_holds(tx, order_id=order["id"])  # redemptions and flash-sale units, with the stock
    subscription_periods.on_order_ended(tx, order, now_ms=now_ms)
    payment = orders.get_payment_tx(tx, payment_id=order["payment_id"]) if order["payment_id"] else None
    if payment is None or event is OrderEvent.PAYMENT_FAILED:
        return
    # Whatever its status, a payment the provider knows of is closed there, so that the payer
    # cannot pay an order that ended (the closer job asks the channel after this commits).
    if payment["provider_ref"] is not None:
        orders.request_close(tx, payment_id=payment["id"], now_ms=now_ms)
    # An `unknown` payment stays unknown: the provider may have taken the money, and only its
    # answer (callback or the janitor's query) may say otherwise.
    if payment["status"] != PaymentStatus.UNKNOWN.value:
        move_payment(tx, payment, PaymentStatus.CANCELED, now_ms=now_ms)


def move_payment(tx: Tx, payment: Row, target: PaymentStatus, *, now_ms: int, fields: dict | None = None) -> bool:
    """Move a payment through its state machine with a guarded write. False when the move is
    not allowed from its status (a stale event), or the payment moved since it was read."""
    current = PaymentStatus(payment["status"])
    try:
        payment_transition(current, target)
    except InvalidTransition:
        return False
    return orders.move_payment(tx, payment_id=payment["id"], from_status=current.value, to_status=target.value,
                               now_ms=now_ms, fields=fields)


def stock_available_again(tx: Tx, items: list[Row]) -> bool:
    """Can a late payment take its units from free stock (its reservation was released), and its
    promotions' redemptions and flash-sale units again (it pays the price it locked)?"""
    for item in items:
        free = catalog.free_stock(tx, product_id=item["product_id"])
        if free is not None and free < item["quantity"]:
            return False
    return not items or promotion_store.released_fit_again(tx, order_id=items[0]["order_id"])


GameDelivery = Callable[..., str]  # Deliveries.create_delivery(tx, order_row=, items_rows=, now_ms=)


def pay(tx: Tx, order: Row, items: list[Row], *, cause: str, now_ms: int,
        game_delivery: GameDelivery | None = None, hold: bool = False) -> None:
    """Take the stock, mark the order paid, deliver the goods and mark it fulfilled: one
    transaction, so a paid order is never left undelivered by a crash. Goods the game delivers
    itself (`game` grants) make the order `delivering` until the game acknowledges them. With
    `hold` (a risk rule), the paid order waits in `in_review` and nothing is delivered."""
    was_pending = order["status"] == OrderStatus.PENDING.value
    transition(OrderStatus(order["status"]), OrderEvent.PAYMENT_SUCCEEDED)
    for item in items:
        if was_pending:
            catalog.take_reserved(tx, product_id=item["product_id"], quantity=item["quantity"])
        else:
            taken = catalog.take_free(tx, product_id=item["product_id"], quantity=item["quantity"])
            assert taken, "checked first"
    if was_pending:
        promotion_store.take_holds(tx, order_id=order["id"])
    else:
        promotion_store.retake_released(tx, order_id=order["id"])
    move(tx, order, OrderEvent.PAYMENT_SUCCEEDED, cause=cause, now_ms=now_ms)
    paid = _moved(order, OrderStatus.PAID, now_ms=now_ms)
    if hold:
        move(tx, paid, OrderEvent.HOLD_FOR_REVIEW, cause="risk", now_ms=now_ms)
        return
    deliver_paid(tx, paid, items, now_ms=now_ms, game_delivery=game_delivery)


def deliver_paid(tx: Tx, order: Row, items: list[Row], *, now_ms: int, game_delivery: GameDelivery | None,
                 cause: str = "delivery") -> None:
    """Deliver a paid (or approved `in_review`) order's goods and move it on. The move comes
    before the goods (one transaction: nobody sees the order between them), so that it directly
    follows the payment's move and its webhook reuses that view (`move`)."""
    assert order["status"] in (OrderStatus.PAID.value, OrderStatus.IN_REVIEW.value), order["status"]
    by_game = any(isinstance(g, GameGrant) for item in items for g in _grants_decoder.decode(item["grants"]))
    assert game_delivery is not None or not by_game, "game deliveries are wired by app.py"
    move(tx, order, OrderEvent.START_DELIVERY if by_game else OrderEvent.DELIVER, cause=cause, now_ms=now_ms)
    link = subscription_periods.order_link_tx(tx, order["id"])
    deliver(tx, order, items, now_ms=now_ms, period_end_ms=subscription_periods.membership_until(link))
    if by_game:
        game_delivery(tx, order_row=order, items_rows=items, now_ms=now_ms)
    subscription_periods.on_order_paid(tx, order, link, now_ms=now_ms)


def deliver_acknowledged(tx: Tx, order_id: str, *, now_ms: int) -> None:
    """The game acknowledged delivering an order's goods: `delivering` -> `fulfilled`."""
    order = orders.get_order_tx(tx, order_id=order_id)
    if order is not None and order["status"] == OrderStatus.DELIVERING.value:
        move(tx, order, OrderEvent.DELIVER, cause="delivery_ack", now_ms=now_ms)


def deliver(tx: Tx, order: Row, items: list[Row], *, now_ms: int, period_end_ms: int | None) -> None:
    """Grant what each unit of each line delivers (grants frozen on the line at purchase); a
    plan's order (`period_end_ms`: subscription_periods.membership_until) to its period end."""
    merchant_id, player_id = order["merchant_id"], order["player_id"]
    for item in items:
        quantity = item["quantity"]
        assert quantity >= 1
        for grant in _grants_decoder.decode(item["grants"]):
            if isinstance(grant, ItemGrant):
                players.add_items(tx, merchant_id=merchant_id, player_id=player_id, sku=grant.sku,
                                  quantity=grant.quantity * quantity, now_ms=now_ms)
            elif isinstance(grant, CurrencyGrant):
                players.apply_wallet_change(tx, txn_id=new_id("wtx"), merchant_id=merchant_id, player_id=player_id,
                                            currency=grant.currency, amount=grant.amount * quantity,
                                            reason="purchase", order_id=order["id"], now_ms=now_ms)
            elif isinstance(grant, MembershipGrant) and period_end_ms is not None:
                players.extend_membership_to(tx, merchant_id=merchant_id, player_id=player_id, sku=grant.sku,
                                             until_ms=period_end_ms, now_ms=now_ms)
            elif isinstance(grant, MembershipGrant):
                players.extend_membership(tx, merchant_id=merchant_id, player_id=player_id, sku=grant.sku,
                                          duration_ms=grant.duration_days * quantity * _DAY_MS, now_ms=now_ms)
            elif isinstance(grant, EntitlementGrant):
                players.add_entitlement(tx, merchant_id=merchant_id, player_id=player_id, sku=grant.sku,
                                        order_id=order["id"], now_ms=now_ms)
            else:
                assert isinstance(grant, GameGrant)  # the game delivers it: see pay()


def raise_alert(tx: Tx, *, merchant_id: str | None, kind: str, severity: str, object_id: str | None, message: str, now_ms: int) -> None:
    alert_id = new_id("alr")
    alerts.insert_alert(tx, alert_id=alert_id, merchant_id=merchant_id, kind=kind, severity=severity,
                        object_id=object_id, message=message, now_ms=now_ms)
    if merchant_id is not None:
        tx.emit(merchant_id=merchant_id, type="alert.created", kind="alert", object_id=alert_id)


def paid_not_delivered(tx: Tx, *, merchant_id: str, order_id: str, detail: str, now_ms: int) -> bool:
    """The one alert for a player who paid and has no goods yet (reconciliation's age check and
    the game's missing acknowledgement both raise it): critical, once per order. True if raised."""
    if alerts.alerted(tx, object_id=order_id, kind="paid_not_delivered"):
        return False
    raise_alert(tx, merchant_id=merchant_id, kind="paid_not_delivered", severity="critical", object_id=order_id,
                now_ms=now_ms, message=f"Order {order_id} is paid but not delivered: {detail}.")
    return True

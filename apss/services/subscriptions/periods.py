"""What a subscription's order does to the subscription, inside the order's own transaction.

The order lifecycle (apss/services/orders/lifecycle.py) calls these when any order is paid or
ends unpaid, whoever moved it (a provider callback, the janitor, a renewal charge, expiry), so a
subscription follows its orders however their payments arrive. This module imports only domain
and store, so the lifecycle can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from apss.domain.catalog import Grant, MembershipGrant
from apss.domain.subscriptions import (
    LIVE,
    Billing,
    SubscriptionEvent,
    SubscriptionStatus,
    period_bounds_ms,
    transition,
)
from apss.ids import new_id
from apss.store import catalog, players
from apss.store import subscriptions as store
from apss.store.db import Row, Tx

__all__ = ["WEBHOOK_EVENTS", "billing_of", "membership_skus", "membership_until", "move", "on_order_ended",
           "on_order_paid", "order_link_tx", "record", "renewal_charge_failed", "set_memberships"]

# Every subscription event is also a merchant webhook of the same type.
WEBHOOK_EVENTS = frozenset(f"subscription.{name}" for name in (
    "created", "activated", "renewed", "payment_failed", "payment_required", "past_due", "canceled", "resumed",
    "incomplete_expired", "cancel_scheduled", "change_requested", "change_scheduled", "changed"))

_grants_decoder = msgspec.json.Decoder(list[Grant])
_billing_decoder = msgspec.json.Decoder(Billing)


def billing_of(subscription: Mapping) -> Billing:
    return _billing_decoder.decode(subscription["billing"])


def move(tx: Tx, subscription: Row, event: SubscriptionEvent, *, cause: str, now_ms: int,
         fields: dict | None = None, webhook: str | None = None) -> SubscriptionStatus:
    """Apply `event` (InvalidTransition if illegal) with a guarded write, record it with its cause
    and emit its webhook (`subscription.<webhook or status>`)."""
    current = SubscriptionStatus(subscription["status"])
    target = transition(current, event)
    moved = store.move_subscription(tx, subscription_id=subscription["id"], from_status=current.value,
                                    to_status=target.value, fields=fields or {}, now_ms=now_ms)
    assert moved, f"subscription {subscription['id']} moved under the single writer"
    name = webhook or (target.value if target != current else event.value)
    _event(tx, subscription, type=f"subscription.{name}", from_status=current.value, to_status=target.value,
           cause=cause, now_ms=now_ms)
    return target


def record(tx: Tx, subscription: Mapping, *, type: str, cause: str, now_ms: int) -> None:
    """An event that moves no status (a failed charge while past due, a scheduled cancel)."""
    _event(tx, subscription, type=type, from_status=subscription["status"], to_status=subscription["status"],
           cause=cause, now_ms=now_ms)


def _event(tx: Tx, subscription: Mapping, *, type: str, from_status: str, to_status: str, cause: str, now_ms: int) -> None:
    assert type in WEBHOOK_EVENTS, type
    store.insert_event(tx, event_id=new_id("evt"), subscription_id=subscription["id"], type=type,
                       from_status=from_status, to_status=to_status, cause=cause, now_ms=now_ms)
    tx.emit(merchant_id=subscription["merchant_id"], type=type, kind="subscription", object_id=subscription["id"])


def membership_skus(tx: Tx, subscription: Mapping) -> list[str]:
    product = catalog.get_product_tx(tx, merchant_id=subscription["merchant_id"], product_id=subscription["product_id"])
    return [g.sku for g in _grants_decoder.decode(product["grants"]) if isinstance(g, MembershipGrant)]


def set_memberships(tx: Tx, subscription: Mapping, *, expires_at_ms: int, now_ms: int) -> None:
    """The plan's memberships end exactly at `expires_at_ms` (kept through retries, ended by a cancel)."""
    for sku in membership_skus(tx, subscription):
        players.set_membership_expiry(tx, merchant_id=subscription["merchant_id"], player_id=subscription["player_id"],
                                      sku=sku, expires_at_ms=expires_at_ms, now_ms=now_ms)


def order_link_tx(tx: Tx, order_id: str) -> Row | None:
    """The order's link to its subscription (its kind and the period it pays for); None for an
    order that belongs to no subscription. Read once by the delivery of a paid order, which both
    `membership_until` and `on_order_paid` need."""
    return store.subscription_order_of_tx(tx, order_id=order_id)


def membership_until(link: Row | None) -> int | None:
    """For an order of a subscription (`link`, from order_link_tx), the end of the period it pays
    for: its membership grants run to that time instead of adding the product's `duration_days`."""
    return None if link is None else link["period_end_ms"]


def _subscription_of(tx: Tx, link: Row | None) -> tuple[Row, Row, SubscriptionStatus] | None:
    """The order's link to its subscription, the subscription and its status; None for an order
    that belongs to no subscription."""
    if link is None:
        return None
    subscription = store.get_subscription_tx(tx, subscription_id=link["subscription_id"])
    return link, subscription, SubscriptionStatus(subscription["status"])


def on_order_paid(tx: Tx, order: Mapping, link: Row | None, *, now_ms: int) -> None:
    """The first order activates the subscription; a renewal renews it for its period; a
    proration order switches the plan (`link`: order_link_tx)."""
    found = _subscription_of(tx, link)
    if found is None:
        return
    row, subscription, status = found
    cause = f"order:{order['id']}"
    by_store = subscription["store"] is not None
    if row["kind"] == "first" and status is SubscriptionStatus.INCOMPLETE:
        move(tx, subscription, SubscriptionEvent.FIRST_PAID, cause=cause, now_ms=now_ms, webhook="activated", fields={
            "activated_at_ms": now_ms, "method_payment_id": order["payment_id"], "latest_order_id": order["id"],
            "channel": order["channel"],
            # The store charges its subscriptions: the renewal job has nothing to do, ever.
            "next_charge_at_ms": None if by_store else subscription["current_period_end_ms"]})
    elif row["kind"] == "renewal" and by_store and status in LIVE:
        _store_renewed(tx, order, row, subscription, cause=cause, now_ms=now_ms)
    elif row["kind"] == "renewal" and status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
        start, end = period_bounds_ms(subscription["anchor_ms"], billing_of(subscription), row["period_index"])
        assert (start, end) == (row["period_start_ms"], row["period_end_ms"])
        move(tx, subscription, SubscriptionEvent.RENEWED, cause=cause, now_ms=now_ms, webhook="renewed", fields={
            "period_index": row["period_index"], "current_period_start_ms": start, "current_period_end_ms": end,
            "latest_order_id": order["id"], "first_failure_ms": None, "retries": 0, "next_charge_at_ms": end,
            "product_id": row["product_id"], "amount": order["amount"], "next_product_id": None})
        set_memberships(tx, {**subscription, "product_id": row["product_id"]}, expires_at_ms=end, now_ms=now_ms)
    elif row["kind"] == "proration" and status is SubscriptionStatus.ACTIVE:
        product = catalog.get_product_tx(tx, merchant_id=subscription["merchant_id"], product_id=row["product_id"])
        amount = msgspec.json.decode(product["prices"], type=dict[str, int])[subscription["currency"]]
        move(tx, subscription, SubscriptionEvent.CHANGE, cause=cause, now_ms=now_ms, webhook="changed", fields={
            "product_id": row["product_id"], "amount": amount, "latest_order_id": order["id"], "next_product_id": None})
    # Anything else (a late payment for a canceled subscription) leaves the subscription alone:
    # the order's own late-payment handling applies.


def _store_renewed(tx: Tx, order: Mapping, row: Row, subscription: Row, *, cause: str, now_ms: int) -> None:
    """A store's renewal: the period is the store's own (the link's dates, not the anchor's
    arithmetic), and it becomes the current one if it ends later (a renewal APSS learns of late,
    after a later one, pays an older period: delivered, the subscription left where it is). A
    renewal means auto-renew was on: any cancel at the period end is off."""
    if row["period_end_ms"] <= subscription["current_period_end_ms"]:
        store.update_subscription(tx, subscription_id=subscription["id"], now_ms=now_ms,
                                  fields={"period_index": max(row["period_index"], subscription["period_index"])})
        return
    move(tx, subscription, SubscriptionEvent.RENEWED, cause=cause, now_ms=now_ms, webhook="renewed", fields={
        "period_index": max(row["period_index"], subscription["period_index"]),
        "current_period_start_ms": row["period_start_ms"], "current_period_end_ms": row["period_end_ms"],
        "latest_order_id": order["id"], "amount": order["amount"], "cancel_at_period_end": 0})
    set_memberships(tx, subscription, expires_at_ms=row["period_end_ms"], now_ms=now_ms)


def renewal_charge_failed(tx: Tx, order: Mapping, *, payment_id: str, code: str, now_ms: int) -> bool:
    """A charge of a live subscription's renewal order failed outside the renewal job (the
    janitor resolving an outcome that was unknown, a provider's failure callback): the order stays
    pending, and the renewal job counts the failure at its next run on the retry schedule (soft,
    or canceled at once when `code` is a hard decline), as if the charge had been refused then.
    A failure of an older payment of the order (a newer charge is under way) counts nothing.
    False for any other order: the caller ends it unpaid."""
    row = store.subscription_order_of_tx(tx, order_id=order["id"])
    if row is None or row["kind"] != "renewal":
        return False
    subscription = store.get_subscription_tx(tx, subscription_id=row["subscription_id"])
    if SubscriptionStatus(subscription["status"]) not in LIVE:
        return False
    if order["payment_id"] == payment_id:
        store.update_subscription(tx, subscription_id=subscription["id"], now_ms=now_ms,
                                  fields={"uncounted_failure_code": code, "next_charge_at_ms": now_ms})
    return True


def on_order_ended(tx: Tx, order: Mapping, *, now_ms: int) -> None:
    """The first order ended unpaid: `incomplete_expired`. A renewal order ended unpaid while its
    subscription is still live (the renewal service cancels first when retries run out, and a
    failed charge is `renewal_charge_failed`'s; this is an expiry or a cancel of the order):
    canceled, membership ending now."""
    found = _subscription_of(tx, order_link_tx(tx, order["id"]))
    if found is None:
        return
    row, subscription, status = found
    cause = f"order:{order['id']}"
    if row["kind"] == "first" and status is SubscriptionStatus.INCOMPLETE:
        move(tx, subscription, SubscriptionEvent.FIRST_UNPAID, cause=cause, now_ms=now_ms,
             fields={"next_charge_at_ms": None, "latest_order_id": order["id"]})
    elif row["kind"] == "renewal" and status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
        move(tx, subscription, SubscriptionEvent.CANCEL, cause=cause, now_ms=now_ms,
             fields={"canceled_at_ms": now_ms, "next_charge_at_ms": None})
        set_memberships(tx, subscription, expires_at_ms=now_ms, now_ms=now_ms)

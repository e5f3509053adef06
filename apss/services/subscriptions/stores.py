"""App Store and Google Play subscriptions on APSS's own subscriptions, inside the transactions of
services/iap (the store purchase's delivery, the store's notification).

- The first delivered transaction of an auto-renewable product (StorePurchase.renews) makes a
  subscription (`store`, `store_original_transaction_id`: Apple's originalTransactionId, Google's
  purchase token) whose first order is that transaction's; each later transaction of the same
  chain is a renewal order of it. Periods are the store's own dates, never APSS's arithmetic:
  from the transaction's purchaseDate (Apple) or the previous period's end (Google, whose
  periods follow one another) to its expiresDate / expiryTime; the membership runs exactly to the
  period's end (the order lifecycle delivers it, periods.on_order_paid moves the subscription).
  A chain whose subscription has ended (expired, revoked) and is paid again (Apple's
  RESUBSCRIBE) makes a new subscription.
- The store charges: `next_charge_at_ms` stays NULL, the renewal job skips these subscriptions,
  and cancel, resume and change through APSS's API are refused (the player manages them in the
  store).
- The store's state moves the subscription through the same status machine, events and
  webhooks as a web subscription: a failed renewal the store retries is `past_due` (the
  entitlement ends at the period end, or runs to the billing grace period's end), the end
  (expired, revoked, or a refund of the current period) `canceled` with the entitlement ending,
  auto-renew off `cancel_at_period_end`. A notification signed before the last one applied, or
  about a period older than the current one, is stale.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from apss.channels.base import StoreNotification, StorePurchase
from apss.domain.subscriptions import INTERVAL_COUNT_MAX, LIVE, Billing, Interval, SubscriptionEvent, SubscriptionStatus
from apss.errors import CallbackRejected
from apss.ids import new_id
from apss.services.subscriptions import periods
from apss.services.views import encode
from apss.store import subscriptions as store
from apss.store.db import Row, Tx

__all__ = ["StorePeriod", "apply_tx", "attach_tx", "note_signed_tx", "order_withdrawn_tx", "period_tx"]

_DAY_MS = 86_400_000


class StorePeriod(msgspec.Struct, frozen=True, kw_only=True):
    """Where a store transaction goes: a new subscription (`subscription_id` None) or the next
    period of the chain's live one."""

    subscription_id: str | None
    index: int
    start_ms: int
    end_ms: int


def period_tx(tx: Tx, *, merchant_id: str, store_name: str, purchase: StorePurchase, param: str) -> StorePeriod | None:
    """The period a store transaction pays for (reads only: called before the delivery's first
    write); None for a purchase that does not renew."""
    if not purchase.renews:
        return None
    end = purchase.expires_at_ms
    if end is None:
        raise CallbackRejected("The store's subscription transaction has no expiry.", code="store_payload_invalid",
                             param=param)
    current = store.store_subscription_tx(tx, merchant_id=merchant_id, store=store_name,
                                          original_transaction_id=purchase.original_transaction_id)
    live = current is not None and SubscriptionStatus(current["status"]) in LIVE
    start = purchase.period_start_ms
    if start is None:  # Google: the period follows the previous one
        start = current["current_period_end_ms"] if live and current["current_period_end_ms"] < end \
            else purchase.purchased_at_ms
    if not start < end:
        raise CallbackRejected("The store's subscription period ends before it starts.", code="store_payload_invalid",
                             param=param)
    if not live:
        return StorePeriod(subscription_id=None, index=0, start_ms=start, end_ms=end)
    index = store.last_period_index_tx(tx, subscription_id=current["id"]) + 1
    return StorePeriod(subscription_id=current["id"], index=index, start_ms=start, end_ms=end)


def _billing(product: Mapping, period: StorePeriod) -> Billing:
    """The plan's billing if the product has one, else the store's first period in whole days (it
    only weighs the subscription in the report's MRR: the store's dates make the periods)."""
    if product["billing"] is not None:
        return msgspec.json.decode(product["billing"], type=Billing)
    days = round((period.end_ms - period.start_ms) / _DAY_MS)
    return Billing(interval=Interval.DAY, interval_count=min(max(days, 1), INTERVAL_COUNT_MAX))


def attach_tx(tx: Tx, order: Mapping, *, period: StorePeriod, purchase: StorePurchase, product: Mapping,
              store_name: str, now_ms: int) -> str:
    """Link the store transaction's new order (not paid yet) to its subscription, made now for a
    first transaction; the subscription's id. The order lifecycle then pays it: delivered to the
    period's end, the subscription activated or renewed (periods.on_order_paid)."""
    subscription_id = period.subscription_id
    kind = "renewal"
    if subscription_id is None:
        kind, subscription_id = "first", new_id("sub")
        store.insert_subscription(tx, {
            "id": subscription_id, "merchant_id": order["merchant_id"], "player_id": order["player_id"],
            "product_id": product["id"], "currency": order["currency"], "amount": order["amount"],
            "channel": store_name, "fallback_channel": None, "metadata": "{}",
            "status": SubscriptionStatus.INCOMPLETE.value, "billing": encode(_billing(product, period)).decode(),
            "anchor_ms": period.start_ms, "current_period_start_ms": period.start_ms,
            "current_period_end_ms": period.end_ms, "latest_order_id": order["id"], "created_at_ms": now_ms,
            "store": store_name, "store_original_transaction_id": purchase.original_transaction_id,
            "store_environment": purchase.environment})
        store.insert_event(tx, event_id=new_id("evt"), subscription_id=subscription_id, type="subscription.created",
                           from_status=None, to_status=SubscriptionStatus.INCOMPLETE.value,
                           cause=f"{store_name}:{purchase.transaction_id}", now_ms=now_ms)
        tx.emit(merchant_id=order["merchant_id"], type="subscription.created", kind="subscription",
                object_id=subscription_id)
    store.insert_subscription_order(tx, {
        "order_id": order["id"], "subscription_id": subscription_id, "kind": kind, "period_index": period.index,
        "period_start_ms": period.start_ms, "period_end_ms": period.end_ms, "product_id": product["id"],
        "created_at_ms": now_ms})
    store.set_order_subscription(tx, order_id=order["id"], subscription_id=subscription_id,
                                 expires_at_ms=order["expires_at_ms"])
    return subscription_id


def _end(tx: Tx, subscription: Row, *, cause: str, now_ms: int) -> None:
    """Over: canceled, the entitlement ending now (or at the period end, if that has passed)."""
    periods.move(tx, subscription, SubscriptionEvent.CANCEL, cause=cause, now_ms=now_ms,
                 fields={"canceled_at_ms": now_ms, "next_charge_at_ms": None})
    periods.set_memberships(tx, subscription, expires_at_ms=min(now_ms, subscription["current_period_end_ms"]),
                            now_ms=now_ms)


def order_withdrawn_tx(tx: Tx, *, order_id: str, cause: str, now_ms: int) -> bool:
    """The store refunded or revoked a transaction: if it paid the current period of a live store
    subscription, the subscription ends now. True if it did."""
    link = store.subscription_order_of_tx(tx, order_id=order_id)
    if link is None:
        return False
    subscription = store.get_subscription_tx(tx, subscription_id=link["subscription_id"])
    if (subscription["store"] is None or SubscriptionStatus(subscription["status"]) not in LIVE
            or subscription["latest_order_id"] != order_id):
        return False
    _end(tx, subscription, cause=cause, now_ms=now_ms)
    return True


def apply_tx(tx: Tx, *, merchant_id: str, store_name: str, notification: StoreNotification, now_ms: int) -> str:
    """A store notification's subscription action (billing_retry, grace_period, expire,
    auto_renew_off, auto_renew_on) on the APSS subscription of its purchase's chain: its result
    for provider_events (applied, stale, unmatched, recorded)."""
    purchase, action = notification.purchase, notification.action
    assert purchase is not None
    subscription = store.store_subscription_tx(tx, merchant_id=merchant_id, store=store_name,
                                               original_transaction_id=purchase.original_transaction_id)
    if subscription is None:
        return "unmatched"
    status = SubscriptionStatus(subscription["status"])
    last = subscription["store_signed_at_ms"]
    if status not in LIVE or (last is not None and notification.signed_at_ms < last):
        return "stale"
    failing = action in ("billing_retry", "grace_period", "expire")
    if failing and purchase.expires_at_ms is not None and purchase.expires_at_ms < subscription["current_period_end_ms"]:
        return "stale"  # about a period older than the current one: a later renewal is known
    store.update_subscription(tx, subscription_id=subscription["id"], now_ms=now_ms,
                              fields={"store_signed_at_ms": notification.signed_at_ms})
    cause = f"{store_name}:{notification.type}" + (f":{notification.subtype}" if notification.subtype else "")
    if action == "expire":
        _end(tx, subscription, cause=cause, now_ms=now_ms)
    elif action in ("billing_retry", "grace_period"):
        if status is SubscriptionStatus.ACTIVE:
            periods.move(tx, subscription, SubscriptionEvent.PAYMENT_FAILED, cause=cause, now_ms=now_ms,
                         fields={"first_failure_ms": now_ms})
        else:
            periods.record(tx, subscription, type="subscription.payment_failed", cause=cause, now_ms=now_ms)
        until = subscription["current_period_end_ms"]
        if action == "grace_period" and purchase.grace_until_ms is not None:
            until = max(until, purchase.grace_until_ms)
        elif action == "billing_retry":
            until = min(until, now_ms)
        periods.set_memberships(tx, subscription, expires_at_ms=until, now_ms=now_ms)
    elif action == "auto_renew_off":
        if subscription["cancel_at_period_end"]:
            return "recorded"
        periods.record(tx, subscription, type="subscription.cancel_scheduled", cause=cause, now_ms=now_ms)
        store.update_subscription(tx, subscription_id=subscription["id"], fields={"cancel_at_period_end": 1},
                                  now_ms=now_ms)
    elif action == "auto_renew_on":
        if not subscription["cancel_at_period_end"]:
            return "recorded"
        periods.move(tx, subscription, SubscriptionEvent.RESUME, cause=cause, now_ms=now_ms, webhook="resumed",
                     fields={"cancel_at_period_end": 0})
    else:
        raise AssertionError(f"not a subscription action: {action}")
    return "applied"


def note_signed_tx(tx: Tx, *, subscription_id: str, signed_at_ms: int, now_ms: int) -> None:
    """A renewal the store notified: later than anything signed before it (auto-renew was on)."""
    row = store.get_subscription_tx(tx, subscription_id=subscription_id)
    if row["store_signed_at_ms"] is None or row["store_signed_at_ms"] < signed_at_ms:
        store.update_subscription(tx, subscription_id=subscription_id, fields={"store_signed_at_ms": signed_at_ms},
                                  now_ms=now_ms)

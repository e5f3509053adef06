"""Subscriptions: create (the first order through checkout), read, cancel, resume, change (with
proration), the renewal job (charge the saved method, retries, fallback) and the report.

A renewal is three steps, like checkout: one write transaction opens the period's order (one per
subscription and period, UNIQUE in the store) or a new payment of it for a retry; the provider is
charged through the gateway outside any transaction; a second transaction records the attempts
and applies the outcome exactly as a provider callback would (payments/callbacks.py), so the
order lifecycle pays, delivers and renews the subscription (periods.py) in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from fractions import Fraction
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.channels.base import Capability, PaymentCreated, PaymentReport
from apss.clock import Clock, format_rfc3339
from apss.config import SubscriptionsConfig
from apss.domain.orders import OrderEvent, OrderStatus
from apss.domain.payments import PaymentStatus
from apss.domain.subscriptions import (
    HARD_DECLINE_CODES,
    LIVE,
    Billing,
    SubscriptionEvent,
    SubscriptionStatus,
    monthly_amount,
    period_bounds_ms,
    prorate,
    retry_at_ms,
    round_half_even,
)
from apss.errors import ApssError, InvalidRequest, InvalidTransition, NotFound
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.orders import lifecycle
from apss.services.orders.checkout import Checkout, OrderCreate, OrderLine, PlayerId
from apss.services.paging import page_of
from apss.services.payments.callbacks import (
    PaymentEvents,
    event_from_report,
    synthetic_event_id,
)
from apss.services.payments.channels import ChannelAccess
from apss.services.payments.gateway import Attempt, PaymentGateway
from apss.services.subscriptions import periods
from apss.services.views import OrderView, encode, order_view
from apss.store import catalog, orders
from apss.store import subscriptions as store
from apss.store.db import Database, Row, Tx

__all__ = ["SubscriptionChange", "SubscriptionCreate", "SubscriptionCancel", "SubscriptionEventView",
           "SubscriptionReport", "SubscriptionStore", "SubscriptionView", "Subscriptions", "subscription_view_tx"]

log = logging.getLogger("apss.subscriptions")

_DAY_MS = 86_400_000
_CHARGE_LEASE_MS = 3_600_000  # a charge in flight; a crash between its transactions retries after this
_UNKNOWN_RECHECK_MS = _DAY_MS  # an unknown outcome is the janitor's; look again after this
_RETRY_MEMBERSHIP_MARGIN_MS = _DAY_MS  # kept this long past a retry's due time, in case it runs late
RENEWAL_ATTEMPT_KEY = "renewal_attempt"  # the 1-based count of renewal charges in the subscription's life
Channel = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{1,31}$")]


class SubscriptionCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    player_id: PlayerId
    product_id: Annotated[str, Meta(min_length=1, max_length=64)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
    channel: Channel | None = None
    fallback_channel: Channel | None = None
    metadata: dict[Annotated[str, Meta(min_length=1, max_length=40)], Annotated[str, Meta(max_length=500)]] = {}


class SubscriptionCancel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at_period_end: bool = True


class SubscriptionChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product_id: Annotated[str, Meta(min_length=1, max_length=64)]


class SubscriptionStore(msgspec.Struct, frozen=True, kw_only=True):
    """The app store that bills a store subscription, and the store's id of its chain (Apple's
    originalTransactionId, Google's purchase token): every renewal of the chain is a period of it."""

    name: str
    original_transaction_id: str
    environment: str


class SubscriptionView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: SubscriptionStatus
    player_id: str
    product_id: str
    currency: str
    amount: int
    channel: str
    fallback_channel: str | None
    current_period_start: str
    current_period_end: str
    cancel_at_period_end: bool
    canceled_at: str | None
    latest_order: OrderView | None
    created_at: str
    store: SubscriptionStore | None = None  # None: a web subscription, charged by APSS


class SubscriptionEventView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    from_status: str | None
    to_status: str
    cause: str
    created_at: str


class SubscriptionReport(msgspec.Struct, frozen=True, kw_only=True):
    """Measured from the data: live counts, MRR, churn and renewals in [from, to)."""

    start: str
    end: str
    active: int
    past_due: int
    mrr: dict[str, int]  # per currency, minor units a month (half-even), over active and past_due
    live_at_start: int
    churned: int  # live at the start and canceled in the window
    churn_bps: int  # churned / live_at_start, in basis points (half-even); 0 when none were live
    renewals_paid: int
    renewals_failed: int
    renewal_success_bps: int  # paid / (paid + failed) of renewal orders settled in the window
    renewals_recovered: int  # paid by a retry, not the first charge
    revenue_recovered: dict[str, int]  # what those retries brought in, per currency


def _view_of(tx_or_row_order: OrderView | None, row: Mapping) -> SubscriptionView:
    return SubscriptionView(
        id=row["id"], status=row["status"], player_id=row["player_id"], product_id=row["product_id"],
        currency=row["currency"], amount=row["amount"], channel=row["channel"], fallback_channel=row["fallback_channel"],
        current_period_start=format_rfc3339(row["current_period_start_ms"]),
        current_period_end=format_rfc3339(row["current_period_end_ms"]),
        cancel_at_period_end=bool(row["cancel_at_period_end"]),
        canceled_at=format_rfc3339(row["canceled_at_ms"]) if row["canceled_at_ms"] is not None else None,
        latest_order=tx_or_row_order, created_at=format_rfc3339(row["created_at_ms"]),
        store=None if row["store"] is None else SubscriptionStore(
            name=row["store"], original_transaction_id=row["store_original_transaction_id"],
            environment=row["store_environment"]),
    )


def subscription_view_tx(tx: Tx, subscription_id: str, *, public_url: str) -> SubscriptionView:
    """The subscription as the writer sees it (webhooks render it in the transaction of the change)."""
    row = store.get_subscription_tx(tx, subscription_id=subscription_id)
    latest = orders.get_order_view_tx(tx, order_id=row["latest_order_id"]) if row["latest_order_id"] else None
    return _view_of(order_view(latest, public_url=public_url) if latest is not None else None, row)


class _Charge(msgspec.Struct, frozen=True, kw_only=True):
    """What the opening transaction of a renewal charge made: enough to charge, no re-read."""

    subscription: dict
    order: dict
    lines: list[dict]
    payment_id: str
    retry: bool


class Subscriptions:
    def __init__(self, *, db: Database, clock: Clock, config: SubscriptionsConfig, public_url: str, checkout: Checkout,
                 gateway: PaymentGateway, channels: ChannelAccess, payment_events: PaymentEvents,
                 idempotency: Idempotency, merchants: Merchants) -> None:
        assert config.renewal_batch_max >= 1
        self._db = db
        self._clock = clock
        self._config = config
        self._public_url = public_url
        self._checkout = checkout
        self._gateway = gateway
        self._channels = channels
        self._payment_events = payment_events
        self._idempotency = idempotency
        self._merchants = merchants

    # -- create ------------------------------------------------------------------------------
    async def create(self, *, merchant: Merchant, command: SubscriptionCreate, idem: IdempotencyRequest | None) -> Outcome:
        """The first order goes through checkout (stock, limits, routing, the gateway, idempotency
        under the key `subscription:<key>`); the subscription is written in its reserve transaction."""
        product = await catalog.get_product(self._db, merchant_id=merchant.id, product_id=command.product_id)
        if product is None:
            raise NotFound(f"No such product: '{command.product_id}'", param="product_id")
        if product["billing"] is None:
            raise InvalidRequest(f"Product '{command.product_id}' has no billing plan.", code="product_not_a_plan",
                                 param="product_id")
        if command.fallback_channel is not None:
            if command.fallback_channel == command.channel:
                raise InvalidRequest("The fallback channel must differ from the channel.", code="fallback_channel_same",
                                     param="fallback_channel")
            self._channels.candidates(merchant, currency=command.currency, country=None, requested=command.fallback_channel)
        order_command = OrderCreate(player_id=command.player_id, items=[OrderLine(product_id=command.product_id)],
                                    currency=command.currency, channel=command.channel, metadata=command.metadata)
        scoped = IdempotencyRequest(key=f"subscription:{idem.key}", request_hash=idem.request_hash) if idem else None
        outcome = await self._checkout.create(
            merchant=merchant, command=order_command, idem=scoped,
            on_reserved=lambda tx, order: self._insert_first(tx, order, product_id=command.product_id,
                                                             fallback_channel=command.fallback_channel))
        if outcome.status != 201:
            return outcome
        order_id = msgspec.json.decode(outcome.body)["id"]
        row = await store.fetch_subscription_by_order(self._db, merchant_id=merchant.id, order_id=order_id)
        assert row is not None, "the first order's transaction wrote its subscription"
        return Outcome(status=201, body=encode(await self._view(row)), replayed=outcome.replayed)

    def _insert_first(self, tx: Tx, order: dict, *, product_id: str, fallback_channel: str | None) -> None:
        now_ms = self._clock.now_ms()
        product = catalog.get_product_tx(tx, merchant_id=order["merchant_id"], product_id=product_id)
        billing = msgspec.json.decode(product["billing"], type=Billing)
        start, end = period_bounds_ms(now_ms, billing, 0)
        subscription_id = new_id("sub")
        store.insert_subscription(tx, {
            "id": subscription_id, "merchant_id": order["merchant_id"], "player_id": order["player_id"],
            "product_id": product_id, "currency": order["currency"], "amount": order["amount"], "channel": order["channel"],
            "fallback_channel": fallback_channel, "metadata": order["metadata"], "status": SubscriptionStatus.INCOMPLETE.value,
            "billing": encode(billing).decode(), "anchor_ms": start, "current_period_start_ms": start,
            "current_period_end_ms": end, "latest_order_id": order["id"], "created_at_ms": now_ms,
        })
        self._attach_order(tx, order, subscription_id=subscription_id, kind="first", index=0, bounds=(start, end),
                           product_id=product_id, expires_at_ms=order["expires_at_ms"])
        store.insert_event(tx, event_id=new_id("evt"), subscription_id=subscription_id, type="subscription.created",
                           from_status=None, to_status=SubscriptionStatus.INCOMPLETE.value, cause="api", now_ms=now_ms)
        tx.emit(merchant_id=order["merchant_id"], type="subscription.created", kind="subscription", object_id=subscription_id)

    def _attach_order(self, tx: Tx, order: dict, *, subscription_id: str, kind: str, index: int, bounds: tuple[int, int],
                      product_id: str, expires_at_ms: int) -> None:
        store.insert_subscription_order(tx, {
            "order_id": order["id"], "subscription_id": subscription_id, "kind": kind, "period_index": index,
            "period_start_ms": bounds[0], "period_end_ms": bounds[1], "product_id": product_id,
            "created_at_ms": self._clock.now_ms()})
        store.set_order_subscription(tx, order_id=order["id"], subscription_id=subscription_id, expires_at_ms=expires_at_ms)
        order["subscription_id"], order["expires_at_ms"] = subscription_id, expires_at_ms

    # -- read --------------------------------------------------------------------------------
    async def _view(self, row: Mapping) -> SubscriptionView:
        latest = None
        if row["latest_order_id"]:
            found = await orders.get_order_view(self._db, merchant_id=row["merchant_id"], order_id=row["latest_order_id"])
            latest = order_view(found, public_url=self._public_url) if found is not None else None
        return _view_of(latest, row)

    async def _row(self, merchant: Merchant, subscription_id: str) -> Mapping:
        row = await store.fetch_subscription(self._db, merchant_id=merchant.id, subscription_id=subscription_id)
        if row is None:
            raise NotFound(f"No such subscription: '{subscription_id}'", param="id")
        return row

    async def get(self, *, merchant: Merchant, subscription_id: str) -> SubscriptionView:
        return await self._view(await self._row(merchant, subscription_id))

    async def list(self, *, merchant: Merchant, after_id: str | None, limit: int, status: str | None,
                   player_id: str | None) -> tuple[list[SubscriptionView], bool]:
        rows = await store.list_subscriptions(self._db, merchant_id=merchant.id, after_id=after_id, limit=limit + 1,
                                              status=status, player_id=player_id)
        views = [await self._view(row) for row in rows]
        return page_of(views, limit, lambda view: view)

    async def events(self, *, merchant: Merchant, subscription_id: str) -> list[SubscriptionEventView]:
        await self._row(merchant, subscription_id)
        rows = await store.list_events(self._db, subscription_id=subscription_id)
        return [SubscriptionEventView(id=r["id"], type=r["type"], from_status=r["from_status"], to_status=r["to_status"],
                                      cause=r["cause"], created_at=format_rfc3339(r["created_at_ms"])) for r in rows]

    # -- cancel and resume -------------------------------------------------------------------
    def _locked(self, tx: Tx, merchant: Merchant, subscription_id: str):
        row = store.get_subscription_tx(tx, subscription_id=subscription_id, merchant_id=merchant.id)
        if row is None:
            raise NotFound(f"No such subscription: '{subscription_id}'", param="id")
        if row["store"] is not None:  # the store bills it: the player cancels, resumes and changes there
            raise InvalidTransition(f"This subscription is billed by {row['store']}: the player cancels, resumes or "
                                    "changes it in the store.", code="subscription_store_managed")
        return row

    async def cancel(self, *, merchant: Merchant, subscription_id: str, command: SubscriptionCancel,
                     idem: IdempotencyRequest | None) -> Outcome:
        """At the period end (default): the player keeps the membership to it and nothing more is
        charged. Now: canceled at once, the membership ends now, a pending renewal is canceled."""

        def transaction(tx: Tx) -> SubscriptionView:
            row = self._locked(tx, merchant, subscription_id)
            now_ms = self._clock.now_ms()
            status = SubscriptionStatus(row["status"])
            if command.at_period_end and status is SubscriptionStatus.ACTIVE:
                if row["cancel_at_period_end"]:
                    raise InvalidTransition("This subscription is already canceled at its period end.")
                periods.record(tx, row, type="subscription.cancel_scheduled", cause="api", now_ms=now_ms)
                store.update_subscription(tx, subscription_id=row["id"], fields={"cancel_at_period_end": 1}, now_ms=now_ms)
            else:  # now, or a past-due subscription whose period has already ended
                self._cancel_now(tx, row, cause="api", now_ms=now_ms, membership_until_ms=now_ms)
            return subscription_view_tx(tx, row["id"], public_url=self._public_url)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction, success_status=200)

    def _cancel_now(self, tx: Tx, row: Mapping, *, cause: str, now_ms: int, membership_until_ms: int) -> None:
        periods.move(tx, row, SubscriptionEvent.CANCEL, cause=cause, now_ms=now_ms,
                     fields={"canceled_at_ms": now_ms, "next_charge_at_ms": None})
        periods.set_memberships(tx, row, expires_at_ms=membership_until_ms, now_ms=now_ms)
        latest = orders.get_order_tx(tx, order_id=row["latest_order_id"]) if row["latest_order_id"] else None
        if latest is not None and latest["status"] == OrderStatus.PENDING.value:
            lifecycle.end_unpaid(tx, latest, OrderEvent.CANCEL, cause=f"subscription:{cause}", now_ms=now_ms)

    async def resume(self, *, merchant: Merchant, subscription_id: str, idem: IdempotencyRequest | None) -> Outcome:
        """Undo a cancel scheduled for the period end (a canceled subscription is over: 409)."""

        def transaction(tx: Tx) -> SubscriptionView:
            row = self._locked(tx, merchant, subscription_id)
            if not row["cancel_at_period_end"]:
                raise InvalidTransition("This subscription has no cancel scheduled to undo.")
            periods.move(tx, row, SubscriptionEvent.RESUME, cause="api", now_ms=self._clock.now_ms(), webhook="resumed",
                         fields={"cancel_at_period_end": 0})
            return subscription_view_tx(tx, row["id"], public_url=self._public_url)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction, success_status=200)

    # -- the renewal job ---------------------------------------------------------------------
    async def renew_due(self) -> int:
        """Charge every subscription whose period ended or whose retry is due (the scheduler's job)."""
        due = await store.due_subscriptions(self._db, now_ms=self._clock.now_ms(), limit=self._config.renewal_batch_max)
        charged = 0
        for subscription_id in due:
            try:
                charged += await self._renew(subscription_id)
            except Exception:  # one subscription's trouble never stops the others
                log.exception("renewal of %s failed; it is tried again at the next run", subscription_id)
        return charged

    async def _renew(self, subscription_id: str) -> int:
        charge = await self._db.write(lambda tx: self._open_charge(tx, subscription_id))
        if charge is None:
            return 0
        merchant = self._merchants.by_id(charge.subscription["merchant_id"])
        attempts = await self._charge(merchant, charge)
        await self._db.write(lambda tx: self._record_charge(tx, charge, attempts))
        return 1

    def _open_charge(self, tx: Tx, subscription_id: str) -> _Charge | None:
        row = store.get_subscription_tx(tx, subscription_id=subscription_id)
        now_ms = self._clock.now_ms()
        due = row["next_charge_at_ms"]
        if SubscriptionStatus(row["status"]) not in LIVE or due is None or due > now_ms:
            return None  # moved since it was read
        if row["store"] is not None:  # an app store charges its own subscriptions: never APSS
            return None
        if row["uncounted_failure_code"] is not None:  # a charge the janitor or a callback found failed
            store.update_subscription(tx, subscription_id=row["id"], fields={"uncounted_failure_code": None}, now_ms=now_ms)
            order = orders.get_order_tx(tx, order_id=row["latest_order_id"])
            self._attempt_failed(tx, row, order, code=row["uncounted_failure_code"], now_ms=now_ms)
            return None
        if row["cancel_at_period_end"] and row["retries"] == 0:
            self._cancel_now(tx, row, cause="period_end", now_ms=now_ms, membership_until_ms=row["current_period_end_ms"])
            return None
        index = row["period_index"] + 1
        existing = store.subscription_order_tx(tx, subscription_id=row["id"], period_index=index, kind="renewal")
        if existing is None:
            try:
                order, lines = self._open_renewal_order(tx, row, index=index)
            except ApssError as refused:  # checkout checks before it writes: nothing of it was written
                self._renewal_refused(tx, row, refused, index=index, now_ms=now_ms)
                return None
        else:
            order = dict(orders.get_order_tx(tx, order_id=existing["order_id"]))
            if order["status"] != OrderStatus.PENDING.value:
                return None  # settled: the lifecycle moved the subscription with it
            lines = [dict(item) for item in orders.order_items_tx(tx, order["id"])]
            payment = orders.get_payment_tx(tx, payment_id=order["payment_id"])
            if payment["status"] != PaymentStatus.UNKNOWN.value:  # a retry: a new charge of the same order
                if payment["provider_ref"] is not None and payment["status"] != PaymentStatus.FAILED.value:
                    orders.request_close(tx, payment_id=payment["id"], now_ms=now_ms)  # the player's unpaid one
                order["payment_id"], order["channel"] = new_id("pay"), row["channel"]
                orders.insert_payment(tx, {"id": order["payment_id"], "order_id": order["id"], "merchant_id": row["merchant_id"],
                                           "channel": row["channel"], "status": PaymentStatus.UNKNOWN.value,
                                           "amount": order["amount"], "currency": order["currency"], "created_at_ms": now_ms})
                store.set_order_payment(tx, order_id=order["id"], payment_id=order["payment_id"], channel=row["channel"],
                                        now_ms=now_ms)
            # else: a charge a crash cut off, asked again under the same payment id (the provider's key)
        store.update_subscription(tx, subscription_id=row["id"], now_ms=now_ms,
                                  fields={"next_charge_at_ms": now_ms + _CHARGE_LEASE_MS, "latest_order_id": order["id"]})
        return _Charge(subscription=dict(row), order=order, lines=lines, payment_id=order["payment_id"],
                       retry=row["retries"] > 0)

    def _open_renewal_order(self, tx: Tx, row: Mapping, *, index: int) -> tuple[dict, list[dict]]:
        """The period's one order, through checkout's reserve step (stock, limits, pricing): it
        stays pending through the retries, so it expires only after the last one."""
        product_id = row["next_product_id"] or row["product_id"]
        bounds = period_bounds_ms(row["anchor_ms"], periods.billing_of(row), index)
        horizon_ms = self._clock.now_ms() + ((self._config.retry_days or (0,))[-1] + 1) * _DAY_MS
        command = OrderCreate(player_id=row["player_id"], items=[OrderLine(product_id=product_id)], currency=row["currency"],
                              channel=row["channel"], metadata=msgspec.json.decode(row["metadata"], type=dict[str, str]))
        merchant = self._merchants.by_id(row["merchant_id"])
        reserved = self._checkout.reserve_in(
            tx, merchant=merchant, command=command, channel=row["channel"],
            on_reserved=lambda tx, order: self._attach_order(tx, order, subscription_id=row["id"], kind="renewal", index=index,
                                                             bounds=bounds, product_id=product_id, expires_at_ms=horizon_ms))
        return reserved.order, [dict(line) for line in reserved.lines]

    def _renewal_refused(self, tx: Tx, row: Mapping, refused: ApssError, *, index: int, now_ms: int) -> None:
        """Checkout refused the period's order (the plan inactive, out of stock, a limit): a failed
        renewal attempt (past_due, the retry schedule, canceled after the last retry), so the job
        does not try again at every run, and one alert for the period, at its first refusal."""
        if row["first_failure_ms"] is None:  # the period's retries raise no more
            lifecycle.raise_alert(tx, merchant_id=row["merchant_id"], kind="subscription_renewal_refused", severity="warning",
                                  object_id=row["id"], now_ms=now_ms,
                                  message=f"Subscription {row['id']}: checkout refused the order of period {index} "
                                          f"({refused.code}); it is tried again on the retry schedule.")
        self._attempt_failed(tx, row, None, code=refused.code, now_ms=now_ms)

    async def _method_ref(self, subscription: Mapping, channel: str) -> str | None:
        """The method the first payment saved (on its channel), as its provider reported it (the
        sandbox's payment reference, Stripe's customer and payment method). None when it saved none
        (a Stripe subscription made before saved methods): the renewal is a payment the player makes."""
        if subscription["method_payment_id"] is None or not self._gateway.supports(channel, Capability.CHARGE_SAVED_METHOD):
            return None
        payment = await orders.fetch_payment(self._db, payment_id=subscription["method_payment_id"])
        if payment is None or payment["channel"] != channel:
            return None
        return payment["saved_method_ref"]

    async def _charge(self, merchant: Merchant, charge: _Charge) -> list[Attempt]:
        """The primary channel; on a retry, the fallback channel when the primary fails. A channel
        holding no saved method makes a payment the player completes (`subscription.payment_required`)."""
        subscription = charge.subscription
        names = [subscription["channel"]]
        if charge.retry and subscription["fallback_channel"]:
            names.append(subscription["fallback_channel"])
        attempts: list[Attempt] = []
        count = subscription["charge_attempts"]
        for name in names:
            request = self._checkout.payment_request(charge.order, charge.lines, name)
            method_ref = await self._method_ref(subscription, name)
            if method_ref is not None:
                count += 1
                request = msgspec.structs.replace(request, metadata={**request.metadata, RENEWAL_ATTEMPT_KEY: str(count)})
                attempt = await self._gateway.charge_saved_method(merchant, name, request, method_ref)
            else:
                attempt = await self._gateway.create_payment(merchant, name, request)
            attempts.append(attempt)
            if attempt.outcome != "failed":
                break
        return attempts

    def _record_charge(self, tx: Tx, charge: _Charge, attempts: list[Attempt]) -> None:
        now_ms = self._clock.now_ms()
        merchant_id = charge.subscription["merchant_id"]
        payment, last = self._record_attempts(tx, charge, attempts)
        if last.channel != payment["channel"]:
            orders.set_order_channel(tx, order_id=payment["order_id"], channel=last.channel, now_ms=now_ms)
            orders.set_payment_details(tx, payment_id=payment["id"], fields={"channel": last.channel}, now_ms=now_ms)
        row = store.get_subscription_tx(tx, subscription_id=charge.subscription["id"])
        charges = sum(1 for a in attempts if a.operation == Capability.CHARGE_SAVED_METHOD.value)
        store.update_subscription(tx, subscription_id=row["id"], now_ms=now_ms,
                                  fields={"charge_attempts": row["charge_attempts"] + charges})
        order = orders.get_order_tx(tx, order_id=payment["order_id"])
        if isinstance(last.value, PaymentReport):  # charged: applied like the provider's callback
            if self._apply_report(tx, last, payment_id=payment["id"], merchant_id=merchant_id, kind="renewal"):
                return
        if isinstance(last.value, PaymentCreated):  # the player pays this one, like a first order
            self._record_created(tx, payment_id=payment["id"], created=last.value, now_ms=now_ms)
            self._attempt_failed(tx, row, order, code=None, now_ms=now_ms)
        elif last.outcome == "failed":
            code = last.provider_code or last.error_code or "failed"
            orders.move_payment(tx, payment_id=payment["id"], from_status=PaymentStatus.UNKNOWN.value,
                                to_status=PaymentStatus.FAILED.value, now_ms=now_ms, fields={"failure_code": code})
            self._attempt_failed(tx, row, order, code=code, now_ms=now_ms)
        else:  # unknown (or a report not final yet): the janitor asks the provider; look again later
            store.update_subscription(tx, subscription_id=row["id"], now_ms=now_ms,
                                      fields={"next_charge_at_ms": now_ms + _UNKNOWN_RECHECK_MS})

    def _attempt_failed(self, tx: Tx, row: Mapping, order: Mapping | None, *, code: str | None, now_ms: int) -> None:
        """Past due until the next retry (the membership is kept to it); canceled after the last
        retry or at once on a hard decline, the membership ending `grace_s` later. No `order`:
        checkout refused to open one (`_renewal_refused`)."""
        assert order is not None or code is not None
        cause = (f"order:{order['id']}" if order is not None else "renewal_refused") + (f":{code}" if code else "")
        periods.record(tx, row, type="subscription.payment_required" if code is None else "subscription.payment_failed",
                       cause=cause, now_ms=now_ms)
        first_failure_ms = row["first_failure_ms"] if row["first_failure_ms"] is not None else now_ms
        hard = code in HARD_DECLINE_CODES
        next_ms = None if hard else retry_at_ms(first_failure_ms, self._config.retry_days, row["retries"])
        if next_ms is None:
            reason = f"hard_decline:{code}" if hard else "retries_exhausted"
            periods.move(tx, row, SubscriptionEvent.CANCEL, cause=reason, now_ms=now_ms,
                         fields={"canceled_at_ms": now_ms, "next_charge_at_ms": None})
            periods.set_memberships(tx, row, expires_at_ms=now_ms + self._config.grace_s * 1000, now_ms=now_ms)
            current = orders.get_order_tx(tx, order_id=order["id"]) if order is not None else None
            if current is not None and current["status"] == OrderStatus.PENDING.value:
                lifecycle.end_unpaid(tx, current, OrderEvent.PAYMENT_FAILED, cause=f"subscription:{reason}", now_ms=now_ms)
            return
        fields = {"first_failure_ms": first_failure_ms, "retries": row["retries"] + 1, "next_charge_at_ms": next_ms}
        if SubscriptionStatus(row["status"]) is SubscriptionStatus.ACTIVE:
            periods.move(tx, row, SubscriptionEvent.PAYMENT_FAILED, cause=cause, now_ms=now_ms, fields=fields)
        else:
            store.update_subscription(tx, subscription_id=row["id"], fields=fields, now_ms=now_ms)
        periods.set_memberships(tx, row, expires_at_ms=next_ms + _RETRY_MEMBERSHIP_MARGIN_MS, now_ms=now_ms)

    # -- change ------------------------------------------------------------------------------
    async def change(self, *, merchant: Merchant, subscription_id: str, command: SubscriptionChange,
                     idem: IdempotencyRequest | None) -> Outcome:
        """Another plan of the same billing period. Dearer: prorated and charged now on the saved
        method (the switch happens when that proration order is paid). Cheaper or equal: switched
        at the next renewal, nothing charged or credited (APSS keeps no credit balance)."""

        def opening(tx: Tx) -> _Charge | SubscriptionView:
            return self._open_change(tx, merchant, subscription_id, command.product_id)

        opened = await self._db.write(lambda tx: self._idempotency.begin(
            tx, merchant_id=merchant.id, request=idem, fn=opening,
            resume=lambda made: f"order:{made.order['id']}" if isinstance(made, _Charge) else "order:none"))
        if isinstance(opened, Outcome):
            return opened
        if isinstance(opened, SubscriptionView):
            outcome = Outcome(status=200, body=encode(opened))
            if idem is not None:
                await self._db.write(lambda tx: self._idempotency.finish(tx, merchant_id=merchant.id, key=idem.key,
                                                                         outcome=outcome))
            return outcome
        attempts = await self._charge(merchant, msgspec.structs.replace(opened, retry=False))

        def record(tx: Tx) -> Outcome:
            self._record_change(tx, opened, attempts)
            outcome = Outcome(status=200, body=encode(subscription_view_tx(tx, subscription_id, public_url=self._public_url)))
            if idem is not None:
                self._idempotency.finish(tx, merchant_id=merchant.id, key=idem.key, outcome=outcome)
            return outcome

        return await self._db.write(record)

    def _open_change(self, tx: Tx, merchant: Merchant, subscription_id: str, product_id: str) -> _Charge | SubscriptionView:
        row = self._locked(tx, merchant, subscription_id)
        now_ms = self._clock.now_ms()
        if SubscriptionStatus(row["status"]) is not SubscriptionStatus.ACTIVE:
            raise InvalidTransition(f"A subscription in status '{row['status']}' cannot change plan.")
        product = catalog.get_product_tx(tx, merchant_id=merchant.id, product_id=product_id)
        if product is None:
            raise NotFound(f"No such product: '{product_id}'", param="product_id")
        if product["billing"] is None or product_id == row["product_id"]:
            raise InvalidRequest("Change to another product with a billing plan.", code="product_not_a_plan", param="product_id")
        if msgspec.json.decode(product["billing"], type=Billing) != periods.billing_of(row):
            raise InvalidRequest("The new plan must bill over the same period.", code="plan_interval_differs", param="product_id")
        price = msgspec.json.decode(product["prices"], type=dict[str, int]).get(row["currency"])
        if price is None:
            raise InvalidRequest(f"The plan has no price in {row['currency']}.", code="currency_not_supported", param="product_id")
        proration = prorate(old_amount=row["amount"], new_amount=price, period_start_ms=row["current_period_start_ms"],
                            period_end_ms=row["current_period_end_ms"], now_ms=now_ms)
        if proration.net <= 0:  # cheaper: from the next renewal
            periods.record(tx, row, type="subscription.change_scheduled", cause=f"api:{product_id}", now_ms=now_ms)
            store.update_subscription(tx, subscription_id=row["id"], fields={"next_product_id": product_id}, now_ms=now_ms)
            return subscription_view_tx(tx, row["id"], public_url=self._public_url)
        existing = store.subscription_order_tx(tx, subscription_id=row["id"], period_index=row["period_index"], kind="proration")
        if existing is not None:
            raise InvalidTransition("This period already has a plan change charged.")
        command = OrderCreate(player_id=row["player_id"], items=[OrderLine(product_id=product_id)], currency=row["currency"],
                              channel=row["channel"], metadata=msgspec.json.decode(row["metadata"], type=dict[str, str]))
        bounds = (row["current_period_start_ms"], row["current_period_end_ms"])
        reserved = self._checkout.reserve_in(
            tx, merchant=merchant, command=command, channel=row["channel"], unit_amount=proration.net,
            on_reserved=lambda tx, order: self._attach_order(tx, order, subscription_id=row["id"], kind="proration",
                                                             index=row["period_index"], bounds=bounds, product_id=product_id,
                                                             expires_at_ms=order["expires_at_ms"]))
        periods.record(tx, row, type="subscription.change_requested", now_ms=now_ms,
                       cause=f"api:{product_id}:credit={proration.credit}:charge={proration.charge}:net={proration.net}")
        return _Charge(subscription=dict(row), order=reserved.order, lines=[dict(line) for line in reserved.lines],
                       payment_id=reserved.order["payment_id"], retry=False)

    def _record_attempts(self, tx: Tx, charge: _Charge, attempts: list[Attempt]) -> tuple[Row, Attempt]:
        """Every provider call of a charge into the payment's attempt log; the payment and the last."""
        payment = orders.get_payment_tx(tx, payment_id=charge.payment_id)
        for attempt in attempts:
            self._gateway.record(tx, attempt, payment_id=payment["id"], merchant_id=charge.subscription["merchant_id"])
        return payment, attempts[-1]

    def _apply_report(self, tx: Tx, last: Attempt, *, payment_id: str, merchant_id: str, kind: str) -> bool:
        """A final charge report, applied like the provider's callback; False when it is not final."""
        event = event_from_report(last.value, event_id=synthetic_event_id(kind), payment_id=payment_id, provider_ref=None)
        if event is None:
            return False
        self._payment_events.apply_event(tx, last.channel, merchant_id, event)
        return True

    @staticmethod
    def _record_created(tx: Tx, *, payment_id: str, created: PaymentCreated, now_ms: int) -> None:
        """A payment the player completes (no saved method): its provider ref and next action."""
        orders.set_payment_details(tx, payment_id=payment_id, now_ms=now_ms, fields={
            "provider_ref": created.provider_ref,
            "next_action": encode(created.next_action).decode() if created.next_action else None})
        orders.move_payment(tx, payment_id=payment_id, from_status=PaymentStatus.UNKNOWN.value,
                            to_status=created.status.value, now_ms=now_ms)

    def _record_change(self, tx: Tx, charge: _Charge, attempts: list[Attempt]) -> None:
        """Like a renewal's record, except that a refused proration charge only fails its order:
        the subscription stays on its plan (no retries, no past_due)."""
        now_ms = self._clock.now_ms()
        merchant_id = charge.subscription["merchant_id"]
        payment, last = self._record_attempts(tx, charge, attempts)
        if isinstance(last.value, PaymentReport):
            if self._apply_report(tx, last, payment_id=payment["id"], merchant_id=merchant_id, kind="proration"):
                return
        if isinstance(last.value, PaymentCreated):
            self._record_created(tx, payment_id=payment["id"], created=last.value, now_ms=now_ms)
        elif last.outcome == "failed":
            moved = orders.move_payment(tx, payment_id=payment["id"], from_status=PaymentStatus.UNKNOWN.value,
                                        to_status=PaymentStatus.FAILED.value, now_ms=now_ms,
                                        fields={"failure_code": last.provider_code or last.error_code})
            order = orders.get_order_tx(tx, order_id=payment["order_id"])
            if moved and order["status"] == OrderStatus.PENDING.value:
                lifecycle.end_unpaid(tx, order, OrderEvent.PAYMENT_FAILED, cause=f"channel:{last.channel}", now_ms=now_ms)

    # -- report ------------------------------------------------------------------------------
    async def report(self, *, merchant: Merchant, from_ms: int, to_ms: int) -> SubscriptionReport:
        assert from_ms < to_ms
        figures = await store.report_figures(self._db, merchant_id=merchant.id, from_ms=from_ms, to_ms=to_ms)
        mrr: dict[str, Fraction] = {}
        for row in figures["live"]:
            billing = msgspec.json.decode(row["billing"], type=Billing)
            mrr[row["currency"]] = mrr.get(row["currency"], Fraction(0)) + monthly_amount(row["amount"], billing)
        paid = [r for r in figures["renewals"] if r["paid_by"] is not None]
        failed = [r for r in figures["renewals"] if r["paid_by"] is None]
        recovered = [r for r in paid if r["paid_by"] != r["first_payment"]]
        revenue: dict[str, int] = {}
        for r in recovered:
            revenue[r["currency"]] = revenue.get(r["currency"], 0) + r["amount"]
        live_at_start, churned = figures["at_start"][0]["n"], figures["churned"][0]["n"]
        settled = len(paid) + len(failed)
        return SubscriptionReport(
            start=format_rfc3339(from_ms), end=format_rfc3339(to_ms),
            active=sum(1 for r in figures["live"] if r["status"] == "active"),
            past_due=sum(1 for r in figures["live"] if r["status"] == "past_due"),
            mrr={currency: round_half_even(value) for currency, value in sorted(mrr.items())},
            live_at_start=live_at_start, churned=churned,
            churn_bps=round_half_even(Fraction(churned * 10_000, live_at_start)) if live_at_start else 0,
            renewals_paid=len(paid), renewals_failed=len(failed),
            renewal_success_bps=round_half_even(Fraction(len(paid) * 10_000, settled)) if settled else 0,
            renewals_recovered=len(recovered), revenue_recovered=dict(sorted(revenue.items())),
        )

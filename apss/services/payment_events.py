"""Provider callbacks: verified first, then applied once per (channel, provider event id).

The route handler is the same for every provider: `/v1/channels/{channel}/webhook/{merchant}`.
The merchant in the path picks the secret that verifies the signature, before anything in the
request is trusted. A verified event is recorded and applied in one write transaction:
- a duplicate (same event id) is acknowledged and changes nothing;
- a stale event (the payment already moved past it) is recorded as `stale` and moves nothing;
- an amount or currency that differs from the payment is an anomaly: an alert, no fulfilment;
- a success for an order that expired meanwhile takes the stock again if it is there, else it
  is an anomaly for refund;
- a `payment.approved` (PayPal) is captured through the channel before the transaction, and
  the capture's report is applied as the payment's outcome; a capture that fails answers the
  provider with an error, so it retries the webhook.
The janitor applies the answers of provider status queries through the same `apply_event`.
"""

from __future__ import annotations

import logging
import sqlite3

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Channel,
    Credentials,
    PaymentQuery,
    PaymentReport,
)
from apss.clock import Clock
from apss.domain.ledger import capture_entries
from apss.domain.orders import OrderEvent, OrderStatus
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import CallbackRejected, NotFound
from apss.services import lifecycle
from apss.services.channels import ChannelAccess
from apss.services.ledger import Ledger
from apss.services.merchants import Merchants
from apss.services.refunds import Refunds
from apss.store import orders
from apss.store.db import Database, Tx

__all__ = ["PaymentEvents", "event_from_report"]

log = logging.getLogger("apss.callbacks")
_UNPAID_ENDED = (OrderStatus.EXPIRED.value, OrderStatus.CANCELED.value, OrderStatus.FAILED.value)


class PaymentEvents:
    def __init__(self, *, db: Database, clock: Clock, channels: ChannelAccess, merchants: Merchants, ledger: Ledger,
                 refunds: Refunds) -> None:
        self._db = db
        self._clock = clock
        self._channels = channels
        self._merchants = merchants
        self._ledger = ledger
        self._refunds = refunds
        self.game_delivery: lifecycle.GameDelivery | None = None  # set by app.py: Deliveries.create_delivery

    async def handle_callback(self, *, channel_name: str, merchant_id: str, headers: dict[str, str],
                              body: bytes, query: dict[str, str]) -> CallbackReply:
        channel = self._channels.for_callback(channel_name)
        merchant = self._merchants.by_id(merchant_id)
        if merchant is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="merchant_id")
        credentials = self._channels.credentials(merchant, channel)
        request = CallbackRequest(headers=headers, body=body, now_s=self._clock.now_ms() // 1000, query=query)
        try:
            events = await channel.verify_callback(request, credentials)
        except CallbackRejected as rejected:
            log.warning("callback %s/%s rejected: %s", channel.name, merchant.id, rejected.code)
            if channel.test_only:
                raise  # the sandbox's bad callbacks answer 400 in APSS's error shape (API.md)
            return channel.callback_reply(accepted=False)  # what the provider expects on failure
        events = await self._capture_approvals(channel, merchant_id, credentials, events)
        if events:
            results = await self._db.write(lambda tx: [self.apply_event(tx, channel.name, merchant.id, e) for e in events])
            log.info("callback %s/%s: %s", channel.name, merchant.id, ", ".join(results))
        return channel.callback_reply(accepted=True)

    async def _capture_approvals(self, channel: Channel, merchant_id: str, credentials: Credentials,
                                 events: list[CallbackEvent]) -> list[CallbackEvent]:
        """Capture each approved payment (outside any transaction); the capture is idempotent at
        the provider, so a redelivered approval captures nothing twice."""
        result: list[CallbackEvent] = []
        for event in events:
            result.append(event)
            if event.kind is not CallbackKind.PAYMENT_APPROVED or not event.payment_id:
                continue
            payment = await orders.fetch_payment(self._db, payment_id=event.payment_id)
            if payment is None or payment["merchant_id"] != merchant_id or payment["status"] == PaymentStatus.SUCCEEDED.value:
                continue
            query = PaymentQuery(payment_id=payment["id"], provider_ref=event.provider_ref or payment["provider_ref"],
                                 amount=payment["amount"], currency=payment["currency"])
            report = await channel.capture_payment(query, credentials)  # ChannelUnavailable -> 502: retried
            follow = event_from_report(report, event_id=f"{event.event_id}:capture", payment_id=payment["id"],
                                       provider_ref=query.provider_ref)
            if follow is not None:
                result.append(follow)
        return result

    def apply_event(self, tx: Tx, channel: str, merchant_id: str, event: CallbackEvent) -> str:
        now_ms = self._clock.now_ms()
        if event.kind in (CallbackKind.REFUND_SUCCEEDED, CallbackKind.REFUND_FAILED):
            return self._refund_event(tx, channel, merchant_id, event, now_ms=now_ms)
        payment = self._find_payment(tx, channel, merchant_id, event)
        if not orders.record_provider_event(tx, channel=channel, event_id=event.event_id, merchant_id=merchant_id,
                                            kind=event.kind.value, payment_id=payment["id"] if payment else None, now_ms=now_ms):
            return "duplicate"
        if payment is None:
            result = "unmatched"
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="callback_unmatched", severity="warning",
                                  object_id=event.event_id, now_ms=now_ms,
                                  message=f"{channel} event {event.event_id} names no payment of this merchant")
        elif event.kind is CallbackKind.PAYMENT_SUCCEEDED:
            result = self._succeeded(tx, payment, event, now_ms=now_ms)
        elif event.kind is CallbackKind.PAYMENT_FAILED:
            result = self._failed(tx, payment, event, now_ms=now_ms)
        elif event.kind is CallbackKind.PAYMENT_APPROVED:
            result = "approved"  # the capture that follows it carries the outcome
        else:
            assert event.kind is CallbackKind.DISPUTE_CREATED
            result = self._refunds.apply_chargeback(tx, payment=payment, amount=event.amount, event_id=event.event_id)
        orders.set_provider_event_result(tx, channel=channel, event_id=event.event_id, result=result)
        return result

    def _refund_event(self, tx: Tx, channel: str, merchant_id: str, event: CallbackEvent, *, now_ms: int) -> str:
        refund = self._refunds.find(tx, refund_id=event.refund_id, provider_ref=event.provider_refund_ref)
        if refund is not None and refund["merchant_id"] != merchant_id:
            refund = None
        if not orders.record_provider_event(tx, channel=channel, event_id=event.event_id, merchant_id=merchant_id,
                                            kind=event.kind.value, payment_id=refund["payment_id"] if refund else None,
                                            now_ms=now_ms):
            return "duplicate"
        if refund is None:
            result = "unmatched"
        elif event.kind is CallbackKind.REFUND_SUCCEEDED:
            result = self._refunds.apply_succeeded(tx, refund_id=refund["id"], cause=f"callback:{event.event_id}")
        else:
            result = self._refunds.apply_failed(tx, refund_id=refund["id"], failure_code=event.failure_code or "refund_failed")
        orders.set_provider_event_result(tx, channel=channel, event_id=event.event_id, result=result)
        return result

    @staticmethod
    def _find_payment(tx: Tx, channel: str, merchant_id: str, event: CallbackEvent) -> sqlite3.Row | None:
        payment = None
        if event.payment_id:
            payment = orders.get_payment_tx(tx, payment_id=event.payment_id)
        if payment is None and event.provider_ref:
            payment = orders.payment_by_provider_ref(tx, channel=channel, provider_ref=event.provider_ref)
        if payment is None or payment["merchant_id"] != merchant_id or payment["channel"] != channel:
            return None
        return payment

    def _succeeded(self, tx: Tx, payment: sqlite3.Row, event: CallbackEvent, *, now_ms: int) -> str:
        if payment["status"] == PaymentStatus.SUCCEEDED.value:
            return "stale"
        if event.amount != payment["amount"] or event.currency != payment["currency"]:
            lifecycle.raise_alert(
                tx, merchant_id=payment["merchant_id"], kind="amount_mismatch", severity="critical", object_id=payment["id"],
                now_ms=now_ms, message=f"provider reported {event.amount} {event.currency}, payment is "
                                       f"{payment['amount']} {payment['currency']}: not fulfilled")
            return "anomaly"
        order = orders.get_order_tx(tx, order_id=payment["order_id"])
        items = orders.order_items_tx(tx, order["id"])
        late = order["status"] in _UNPAID_ENDED
        can_pay = order["status"] == OrderStatus.PENDING.value or (late and lifecycle.stock_available_again(tx, items))
        fields = {"status": PaymentStatus.SUCCEEDED.value, "failure_code": None}
        if event.provider_ref and payment["provider_ref"] is None:
            fields["provider_ref"] = event.provider_ref
        orders.update_payment(tx, payment_id=payment["id"], fields=fields, now_ms=now_ms)
        merchant_share = self._post_capture(tx, payment)
        if not can_pay:
            lifecycle.raise_alert(
                tx, merchant_id=payment["merchant_id"], kind="late_payment_out_of_stock", severity="critical",
                object_id=order["id"], now_ms=now_ms,
                message=f"payment {payment['id']} succeeded after order {order['id']} became {order['status']} "
                        "and its stock is gone: refund it")
            return "anomaly"
        lifecycle.pay(tx, order, items, cause=f"callback:{event.event_id}", now_ms=now_ms, game_delivery=self.game_delivery)
        self._ledger.defer_currency_sale(tx, order=order, items=items, merchant_share=merchant_share, reference=payment["id"])
        return "applied"

    def _post_capture(self, tx: Tx, payment: sqlite3.Row) -> int:
        """The money is at the provider, whatever becomes of the order: post it. Returns the
        merchant's share."""
        finance = self._ledger.finance(tx, payment["merchant_id"])
        fee = self._ledger.fee(channel=payment["channel"], amount=payment["amount"], currency=payment["currency"])
        entries = capture_entries(merchant_id=payment["merchant_id"], channel=payment["channel"], gross=payment["amount"],
                                  fee=fee, currency=payment["currency"], commission_bps=finance.commission_bps,
                                  splits=finance.splits)
        if entries:
            self._ledger.post(tx, merchant_id=payment["merchant_id"], kind="payment_captured", reference=payment["id"],
                              entries=entries)
        return sum(e.credit for e in entries if e.account.startswith("merchant_payable:"))

    @staticmethod
    def _failed(tx: Tx, payment: sqlite3.Row, event: CallbackEvent, *, now_ms: int) -> str:
        if payment["status"] in (PaymentStatus.SUCCEEDED.value, PaymentStatus.FAILED.value):
            return "stale"
        orders.update_payment(tx, payment_id=payment["id"], now_ms=now_ms,
                              fields={"status": PaymentStatus.FAILED.value, "failure_code": event.failure_code or "failed"})
        order = orders.get_order_tx(tx, order_id=payment["order_id"])
        if order["status"] == OrderStatus.PENDING.value:
            lifecycle.end_unpaid(tx, order, OrderEvent.PAYMENT_FAILED, cause=f"callback:{event.event_id}", now_ms=now_ms)
        return "applied"


def event_from_report(report: PaymentReport, *, event_id: str, payment_id: str, provider_ref: str | None) -> CallbackEvent | None:
    """A provider's answer to a status query or capture, as the event it stands for (or None
    while the outcome is not final)."""
    if report.status is PaymentStatus.SUCCEEDED:
        kind = CallbackKind.PAYMENT_SUCCEEDED
    elif report.status is PaymentStatus.FAILED:
        kind = CallbackKind.PAYMENT_FAILED
    else:
        return None
    return CallbackEvent(event_id=event_id, kind=kind, payment_id=payment_id, provider_ref=report.provider_ref or provider_ref,
                         amount=report.amount, currency=report.currency, failure_code=report.failure_code)

"""Provider callbacks: verified first, then applied once per (merchant, channel, event id).

The route handler is the same for every provider: `/v1/channels/{channel}/webhook/{merchant}`.
The merchant in the path picks the secret that verifies the signature, before anything in the
request is trusted. A verified event is recorded and applied in one write transaction:
- de-duplication is per merchant: two merchants sharing one provider account both receive every
  event, and one's copy never makes the other's a duplicate;
- the payment is matched on our payment id or on any provider id it acquired (payment_refs),
  and acquires the ids the event names (a Stripe dispute names the intent and the charge, the
  payment was created as a Checkout session);
- a duplicate (same event id for this merchant) is acknowledged and changes nothing;
- every status write is a guarded transition: an event the payment moved past is `stale`;
- an amount or currency that differs from the payment is an anomaly: an alert, no fulfilment;
- a success for an order that ended unpaid takes the stock again if it is there; else the
  merchant's `late_payment` policy refunds it through the channel (default) or only alerts;
- a `payment.approved` (PayPal) is captured through the gateway before the transaction, and the
  capture's report is applied as the payment's outcome; a capture whose outcome is unknown
  answers the provider with an error, so it retries the webhook.
The janitor applies the answers of provider status queries through the same `apply_event`.
"""

from __future__ import annotations

import logging

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Capability,
    PaymentQuery,
    PaymentReport,
)
from apss.clock import Clock
from apss.domain.orders import OrderEvent, OrderStatus
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import CallbackRejected, ChannelUnavailable, NotFound
from apss.ids import new_token
from apss.services.disputes.records import DisputeRecords
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.money.ledger import Ledger
from apss.services.orders import lifecycle
from apss.services.payments.channels import ChannelAccess
from apss.services.payments.gateway import Attempt, PaymentGateway
from apss.services.refunds.refunds import Refunds
from apss.services.risk.aml import Aml
from apss.services.risk.engine import RiskEngine
from apss.services.subscriptions import periods as subscription_periods
from apss.store import orders
from apss.store.db import Database, Row, Tx

__all__ = ["PaymentEvents", "event_from_report", "synthetic_event_id"]

log = logging.getLogger("apss.callbacks")
_DISPUTE_KINDS = (CallbackKind.DISPUTE_CREATED, CallbackKind.DISPUTE_UPDATED, CallbackKind.DISPUTE_CLOSED)
_UNPAID_ENDED = (OrderStatus.EXPIRED.value, OrderStatus.CANCELED.value, OrderStatus.FAILED.value)


def synthetic_event_id(kind: str) -> str:
    """An event id APSS makes up itself (a status query's answer, a capture's report): never
    guessable, so nobody can post a callback with it first and make ours a duplicate."""
    return f"{kind}:{new_token()}"


class PaymentEvents:
    def __init__(self, *, db: Database, clock: Clock, wall_clock: Clock, channels: ChannelAccess,
                 gateway: PaymentGateway, merchants: Merchants, ledger: Ledger, refunds: Refunds,
                 game_delivery: lifecycle.GameDelivery, risk: RiskEngine, disputes: DisputeRecords, aml: Aml) -> None:
        """`wall_clock` checks only the signatures' timestamp tolerance: providers (and their
        stand-ins, and the sandbox) sign with real time, also when `clock` is a moved test clock."""
        self._db = db
        self._clock = clock
        self._wall_clock = wall_clock
        self._channels = channels
        self._gateway = gateway
        self._merchants = merchants
        self._ledger = ledger
        self._refunds = refunds
        self._game_delivery = game_delivery
        self._risk = risk
        self._disputes = disputes
        self._aml = aml

    async def handle_callback(self, *, channel_name: str, merchant_id: str, headers: dict[str, str],
                              body: bytes, query: dict[str, str]) -> CallbackReply:
        channel = self._channels.for_callback(channel_name)
        merchant = self._merchants.by_id(merchant_id)
        if merchant is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="merchant_id")
        credentials = self._channels.credentials(merchant, channel)  # ChannelNotAvailable: 400
        request = CallbackRequest(headers=headers, body=body, now_s=self._wall_clock.now_ms() // 1000, query=query)
        try:
            events = await channel.verify_callback(request, credentials)
        except CallbackRejected as rejected:
            log.warning("callback %s/%s rejected: %s", channel.name, merchant.id, rejected.code)
            if channel.test_only:
                raise  # the sandbox's bad callbacks answer 400 in APSS's error shape (API.md)
            return channel.callback_reply(accepted=False)  # what the provider expects on failure
        events, attempts = await self._capture_approvals(channel.name, merchant, events)
        if events:
            def transaction(tx: Tx) -> list[str]:
                for payment_id, attempt in attempts:
                    self._gateway.record(tx, attempt, payment_id=payment_id, merchant_id=merchant.id)
                return [self.apply_event(tx, channel.name, merchant.id, e) for e in events]

            results = await self._db.write(transaction)
            log.info("callback %s/%s: %s", channel.name, merchant.id, ", ".join(results))
        return channel.callback_reply(accepted=True)

    async def _capture_approvals(self, channel: str, merchant: Merchant, events: list[CallbackEvent]
                                 ) -> tuple[list[CallbackEvent], list[tuple[str, Attempt]]]:
        """Capture each approved payment (outside any transaction); the capture is idempotent at
        the provider, so a redelivered approval captures nothing twice."""
        result: list[CallbackEvent] = []
        attempts: list[tuple[str, Attempt]] = []
        for event in events:
            result.append(event)
            if event.kind is not CallbackKind.PAYMENT_APPROVED or not event.payment_id:
                continue
            payment = await orders.fetch_payment(self._db, payment_id=event.payment_id)
            if payment is None or payment["merchant_id"] != merchant.id or payment["status"] == PaymentStatus.SUCCEEDED.value:
                continue
            query = PaymentQuery(payment_id=payment["id"], provider_ref=event.provider_ref or payment["provider_ref"],
                                 amount=payment["amount"], currency=payment["currency"])
            attempt = await self._gateway.capture(merchant, channel, query)
            attempts.append((payment["id"], attempt))
            if attempt.outcome == "unknown":  # the provider retries the webhook; the capture is idempotent
                raise ChannelUnavailable(f"the {channel} capture of {payment['id']} has no known outcome yet")
            report = attempt.value if attempt.succeeded else PaymentReport(
                status=PaymentStatus.FAILED, failure_code=attempt.provider_code or attempt.error_code)
            follow = event_from_report(report, event_id=synthetic_event_id("capture"), payment_id=payment["id"],
                                       provider_ref=query.provider_ref)
            if follow is not None:
                result.append(follow)
        return result, attempts

    def apply_event(self, tx: Tx, channel: str, merchant_id: str, event: CallbackEvent) -> str:
        now_ms = self._clock.now_ms()
        if event.kind in (CallbackKind.REFUND_SUCCEEDED, CallbackKind.REFUND_FAILED):
            return self._refund_event(tx, channel, merchant_id, event, now_ms=now_ms)
        payment = self._find_payment(tx, channel, merchant_id, event)
        if not orders.record_provider_event(tx, merchant_id=merchant_id, channel=channel, event_id=event.event_id,
                                            kind=event.kind.value, payment_id=payment["id"] if payment else None,
                                            now_ms=now_ms):
            return "duplicate"
        if payment is None:
            result = "unmatched"
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="callback_unmatched", severity="warning",
                                  object_id=event.event_id, now_ms=now_ms,
                                  message=f"{channel} event {event.event_id} names no payment of this merchant")
        else:
            self._gateway.acquire(tx, channel=channel, payment_id=payment["id"], merchant_id=merchant_id,
                                  refs=[r for r in (event.provider_ref, *event.provider_refs) if r])
            result = self._apply_to_payment(tx, payment, event, now_ms=now_ms)
        orders.set_provider_event_result(tx, merchant_id=merchant_id, channel=channel, event_id=event.event_id,
                                         result=result)
        return result

    def _apply_to_payment(self, tx: Tx, payment: Row, event: CallbackEvent, *, now_ms: int) -> str:
        if event.kind is CallbackKind.PAYMENT_SUCCEEDED:
            return self._succeeded(tx, payment, event, now_ms=now_ms)
        if event.kind is CallbackKind.PAYMENT_FAILED:
            return self._failed(tx, payment, event, now_ms=now_ms)
        if event.kind is CallbackKind.PAYMENT_APPROVED:
            return "approved"  # the capture that follows it carries the outcome
        assert event.kind in _DISPUTE_KINDS, event.kind
        return self._disputes.apply_event(tx, channel=payment["channel"], payment=payment, event=event)

    def _refund_event(self, tx: Tx, channel: str, merchant_id: str, event: CallbackEvent, *, now_ms: int) -> str:
        refund = self._refunds.find(tx, refund_id=event.refund_id, provider_ref=event.provider_refund_ref)
        if refund is not None and refund["merchant_id"] != merchant_id:
            refund = None
        if not orders.record_provider_event(tx, merchant_id=merchant_id, channel=channel, event_id=event.event_id,
                                            kind=event.kind.value, payment_id=refund["payment_id"] if refund else None,
                                            now_ms=now_ms):
            return "duplicate"
        if refund is None:
            result = "unmatched"
        elif event.kind is CallbackKind.REFUND_SUCCEEDED:
            result = self._refunds.apply_succeeded(tx, refund_id=refund["id"], cause=f"callback:{event.event_id}")
        else:
            result = self._refunds.apply_failed(tx, refund_id=refund["id"], failure_code=event.failure_code or "refund_failed")
        orders.set_provider_event_result(tx, merchant_id=merchant_id, channel=channel, event_id=event.event_id,
                                         result=result)
        return result

    @staticmethod
    def _find_payment(tx: Tx, channel: str, merchant_id: str, event: CallbackEvent) -> Row | None:
        payment = orders.get_payment_tx(tx, payment_id=event.payment_id) if event.payment_id else None
        if payment is None:
            refs = [r for r in (event.provider_ref, *event.provider_refs) if r]
            payment = orders.payment_by_refs(tx, channel=channel, refs=refs) if refs else None
        if payment is None or payment["merchant_id"] != merchant_id or payment["channel"] != channel:
            return None
        return payment

    def _succeeded(self, tx: Tx, payment: Row, event: CallbackEvent, *, now_ms: int) -> str:
        if payment["status"] == PaymentStatus.SUCCEEDED.value:
            return "stale"
        if event.amount != payment["amount"] or event.currency != payment["currency"]:
            lifecycle.raise_alert(
                tx, merchant_id=payment["merchant_id"], kind="amount_mismatch", severity="critical", object_id=payment["id"],
                now_ms=now_ms, message=f"provider reported {event.amount} {event.currency}, payment is "
                                       f"{payment['amount']} {payment['currency']}: not fulfilled; a person must look")
            return "anomaly"
        order = orders.get_order_tx(tx, order_id=payment["order_id"])
        items = orders.order_items_tx(tx, order["id"])
        late = order["status"] in _UNPAID_ENDED
        can_pay = order["status"] == OrderStatus.PENDING.value or (late and lifecycle.stock_available_again(tx, items))
        fields = {"failure_code": None}
        if event.provider_ref and payment["provider_ref"] is None:
            fields["provider_ref"] = event.provider_ref
        if event.saved_method_ref:  # a subscription's first payment: its renewals charge this
            fields["saved_method_ref"] = event.saved_method_ref
        if not lifecycle.move_payment(tx, payment, PaymentStatus.SUCCEEDED, now_ms=now_ms, fields=fields):
            return "stale"
        merchant_share = self._post_capture(tx, payment)
        if not can_pay:
            return self._late_payment(tx, payment, order, now_ms=now_ms)
        merchant = self._merchants.by_id(order["merchant_id"])
        hold = self._risk.callback_hold_tx(tx, order=order, items=items, merchant_currency=merchant.currency, card={
            "fingerprint": event.card_fingerprint, "bin": event.card_bin, "country": event.card_country})
        # AML counters and cases, and the KYC hold of a large payment, in the booking's transaction.
        kyc_hold = self._aml.on_paid_tx(tx, order=order, payment=payment, merchant_currency=merchant.currency,
                                        risk_hold=hold)
        hold = hold or kyc_hold
        lifecycle.pay(tx, order, items, cause=f"callback:{event.event_id}", now_ms=now_ms, game_delivery=self._game_delivery,
                      hold=hold)
        self._ledger.defer_currency_sale(tx, order=order, items=items, merchant_share=merchant_share, reference=payment["id"])
        self._ledger.post_discount(tx, order=order, items=items, reference=payment["id"])
        return "applied"

    def _late_payment(self, tx: Tx, payment: Row, order: Row, *, now_ms: int) -> str:
        """Money taken for an order that cannot take it: by the merchant's policy, refunded
        through the channel (queued for the refund sender, booked when it succeeds) or an alert."""
        policy = self._ledger.finance(tx, payment["merchant_id"]).late_payment
        refunded = policy == "refund" and self._gateway.supports(payment["channel"], Capability.REFUND)
        if refunded:
            refund_id = self._refunds.queue_refund(tx, payment=payment, reason="late_payment")
            action = f"refunding it in full ({refund_id})"
        else:
            action = "refund it" if policy == "refund" else "the merchant's policy is to alert only"
        lifecycle.raise_alert(
            tx, merchant_id=payment["merchant_id"], kind="late_payment_out_of_stock", severity="critical",
            object_id=order["id"], now_ms=now_ms,
            message=f"payment {payment['id']} succeeded after order {order['id']} became {order['status']} "
                    f"and its stock is gone: {action}")
        return "anomaly"

    def _post_capture(self, tx: Tx, payment: Row) -> int:
        fee = self._ledger.fee(channel=payment["channel"], amount=payment["amount"], currency=payment["currency"])
        return self._ledger.post_capture(tx, payment=payment, fee=fee)

    def _failed(self, tx: Tx, payment: Row, event: CallbackEvent, *, now_ms: int) -> str:
        if payment["status"] == PaymentStatus.FAILED.value:
            return "stale"
        code = event.failure_code or "failed"
        if not lifecycle.move_payment(tx, payment, PaymentStatus.FAILED, now_ms=now_ms, fields={"failure_code": code}):
            return "stale"
        order = orders.get_order_tx(tx, order_id=payment["order_id"])
        self._risk.count_tx(tx, order=order, event="declines")
        if order["status"] != OrderStatus.PENDING.value:
            return "applied"
        # A subscription's renewal is retried on its schedule, not ended by one failed charge.
        if not subscription_periods.renewal_charge_failed(tx, order, payment_id=payment["id"], code=code, now_ms=now_ms):
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
                         amount=report.amount, currency=report.currency, failure_code=report.failure_code,
                         provider_refs=list(report.provider_refs), saved_method_ref=report.saved_method_ref)

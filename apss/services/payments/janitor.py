"""The payment janitor: asks providers about what is not final at our side, and closes what ended.

Payments: a provider call that timed out leaves a payment `unknown`; a lost callback leaves it
`requires_action` (or `canceled` once its order expired). At the ages in
`channels.janitor_schedule_s` (default 5 min, 1 h, 1 day after creation) the janitor queries the
channel through the gateway; a final answer is applied exactly like a callback (same idempotent
path, under an event id nobody can guess), and the janitor checks that it was applied: an answer
that could not be (an anomaly, a clash) raises an alert. A payment still `unknown` after the last
query raises a critical alert: a person must look, the system never guesses.

Refunds: one `pending` at its provider, or whose resends (services/refunds) ran out after one may
have reached the provider, is asked about at the same ages and the answer applied (a success
after `failed` too, with an alert). Refunds queued to be sent again are the refund sender's.

Closing: an order that ended unpaid (expired, canceled) asks for its payment to be closed at the
provider (`close_state = pending`); the closer sends the void/close through the gateway and
retries at the next run while the outcome is unknown, up to `len(janitor_schedule_s)` attempts.

Several instances on one PostgreSQL database: the janitor job runs on its lease's owner
(services/ops/job_leases.py), and each of its three passes also claims its rows first (one write
per pass: `SELECT ... FOR UPDATE SKIP LOCKED`, then `claimed_by`/`claimed_until_ms` set on the payments or
refunds), so two janitors (a lease moving while its old owner still finishes a pass, a `run_now`)
never ask a provider about the same payment at once. Each row's record ends its claim; the claims
of an instance that died mid-pass expire after the longest pass (a provider timeout per row of a
batch, plus a minute). SQLite's single process reads the rows as they are, without claims.
"""

from __future__ import annotations

import logging

from apss.channels.base import PaymentQuery, RefundQuery
from apss.clock import Clock
from apss.config import ChannelsConfig
from apss.services.merchants.keys import Merchants
from apss.services.orders import lifecycle
from apss.services.payments.callbacks import (
    PaymentEvents,
    event_from_report,
    synthetic_event_id,
)
from apss.services.payments.gateway import Attempt, PaymentGateway
from apss.services.refunds.refunds import Refunds
from apss.store import channels as store
from apss.store import orders
from apss.store import refunds as refund_store
from apss.store.db import Database, Row, Tx

__all__ = ["PaymentJanitor"]

log = logging.getLogger("apss.janitor")
_DAY_MS = 86_400_000
_APPLIED = ("applied", "stale")  # a stale answer: the payment already moved past it, by a callback


class PaymentJanitor:
    def __init__(self, *, db: Database, clock: Clock, config: ChannelsConfig, gateway: PaymentGateway,
                 merchants: Merchants, payment_events: PaymentEvents, refunds: Refunds, claimer: str = "local") -> None:
        self._db = db
        self._claimer = claimer  # this instance's id in the claims (PostgreSQL)
        self._claim_ms = int((config.janitor_batch_max * config.provider_timeout_s + 60) * 1000)
        self._claims = db.dialect == "postgresql"
        self._clock = clock
        self._config = config
        self._gateway = gateway
        self._merchants = merchants
        self._events = payment_events
        self._refunds = refunds

    async def run(self) -> int:
        """One pass: payments due a query, refunds due a query, payments to close. Returns how
        many payments and refunds were resolved."""
        resolved = await self._check_payments()
        resolved += await self._check_refunds()
        await self.close_due()
        return resolved

    # -- payments ------------------------------------------------------------------------------
    async def _check_payments(self) -> int:
        now_ms = self._clock.now_ms()
        schedule_ms = [s * 1000 for s in self._config.janitor_schedule_s]
        first_ms, oldest_ms, limit = schedule_ms[0], now_ms - schedule_ms[-1] - _DAY_MS, self._config.janitor_batch_max
        if self._claims:
            due = await self._db.write(lambda tx: store.claim_open_payments_due(
                tx, now_ms=now_ms, first_check_ms=first_ms, oldest_ms=oldest_ms, limit=limit, owner=self._claimer,
                claimed_until_ms=now_ms + self._claim_ms))
        else:
            due = await store.open_payments_due(self._db, now_ms=now_ms, first_check_ms=first_ms, oldest_ms=oldest_ms,
                                                limit=limit)
        resolved = 0
        for payment in due:
            attempt = await self._gateway.query_payment(self._merchants.by_id(payment["merchant_id"]), payment["channel"],
                                                        PaymentQuery(payment_id=payment["id"], provider_ref=payment["provider_ref"],
                                                                     amount=payment["amount"], currency=payment["currency"]))
            resolved += await self._db.write(lambda tx, p=payment, a=attempt: self._record(tx, p, a, schedule_ms))
        return resolved

    def _record(self, tx: Tx, payment: Row, attempt: Attempt, schedule_ms: list[int]) -> bool:
        now_ms = self._clock.now_ms()
        self._gateway.record(tx, attempt, payment_id=payment["id"], merchant_id=payment["merchant_id"])
        event = None
        if attempt.succeeded:
            event = event_from_report(attempt.value, event_id=synthetic_event_id("query"), payment_id=payment["id"],
                                      provider_ref=payment["provider_ref"])
        if event is not None:
            result = self._events.apply_event(tx, payment["channel"], payment["merchant_id"], event)
            if result not in _APPLIED:
                lifecycle.raise_alert(tx, merchant_id=payment["merchant_id"], kind="janitor_result_not_applied",
                                      severity="critical", object_id=payment["id"], now_ms=now_ms,
                                      message=f"{payment['channel']} says payment {payment['id']} is "
                                              f"{event.kind.value}, and applying it gave '{result}'")
        done = payment["checks_done"] + 1
        next_at = None if event is not None or done >= len(schedule_ms) else payment["created_at_ms"] + schedule_ms[done]
        store.record_check(tx, payment_id=payment["id"], checks_done=done, next_check_at_ms=next_at,
                           last_status=attempt.value.status.value if attempt.succeeded else "query_failed", now_ms=now_ms)
        if self._claims:
            store.release_payment(tx, payment_id=payment["id"])
        if next_at is None and event is None and payment["status"] == "unknown":
            lifecycle.raise_alert(tx, merchant_id=payment["merchant_id"], kind="payment_unresolved", severity="critical",
                                  object_id=payment["id"], now_ms=now_ms,
                                  message=f"{payment['channel']} never said what became of payment {payment['id']}")
        return event is not None

    # -- refunds -------------------------------------------------------------------------------
    async def _check_refunds(self) -> int:
        now_ms = self._clock.now_ms()
        schedule_ms = [s * 1000 for s in self._config.janitor_schedule_s]
        if self._claims:
            due = await self._db.write(lambda tx: refund_store.claim_pending_due(
                tx, now_ms=now_ms, first_check_ms=schedule_ms[0], limit=self._config.janitor_batch_max,
                owner=self._claimer, claimed_until_ms=now_ms + self._claim_ms))
        else:
            due = await refund_store.pending_due(self._db, now_ms=now_ms, first_check_ms=schedule_ms[0],
                                                 limit=self._config.janitor_batch_max)
        resolved = 0
        for refund in due:
            query = RefundQuery(refund_id=refund["id"], payment_id=refund["payment_id"], provider_ref=refund["provider_ref"] or "",
                                provider_refund_ref=refund["provider_refund_ref"], amount=refund["amount"],
                                currency=refund["currency"])
            attempt = await self._gateway.query_refund(self._merchants.by_id(refund["merchant_id"]), refund["channel"], query)
            resolved += await self._db.write(lambda tx, r=refund, a=attempt: self._record_refund(tx, r, a, schedule_ms))
        return resolved

    def _record_refund(self, tx: Tx, refund: Row, attempt: Attempt, schedule_ms: list[int]) -> bool:
        now_ms = self._clock.now_ms()
        self._gateway.record(tx, attempt, payment_id=refund["payment_id"], merchant_id=refund["merchant_id"])
        status = attempt.value.status if attempt.succeeded else None
        if status == "succeeded":
            self._refunds.apply_succeeded(tx, refund_id=refund["id"], cause=f"janitor:{refund['id']}")
        elif status == "failed":
            self._refunds.apply_failed(tx, refund_id=refund["id"], failure_code=attempt.value.failure_code or "refund_failed")
        final = status in ("succeeded", "failed")
        done = refund["checks_done"] + 1
        if final:
            return True
        if done >= len(schedule_ms):
            refund_store.record_check(tx, refund_id=refund["id"], checks_done=-1, next_check_at_ms=None)
            lifecycle.raise_alert(tx, merchant_id=refund["merchant_id"], kind="refund_unresolved", severity="critical",
                                  object_id=refund["id"], now_ms=now_ms,
                                  message=f"{refund['channel']} never said what became of refund {refund['id']}")
        else:
            refund_store.record_check(tx, refund_id=refund["id"], checks_done=done,
                                      next_check_at_ms=refund["created_at_ms"] + schedule_ms[done])
        return False

    # -- closing -------------------------------------------------------------------------------
    async def close_due(self) -> int:
        """Close at their providers the payments of orders that ended unpaid."""
        closed = 0
        if self._claims:
            now_ms = self._clock.now_ms()
            to_close = await self._db.write(lambda tx: orders.claim_payments_to_close(
                tx, now_ms=now_ms, limit=self._config.janitor_batch_max, owner=self._claimer,
                claimed_until_ms=now_ms + self._claim_ms))
        else:
            to_close = await orders.payments_to_close(self._db, limit=self._config.janitor_batch_max)
        for payment in to_close:
            attempt = await self._gateway.cancel_payment(self._merchants.by_id(payment["merchant_id"]), payment["channel"],
                                                         PaymentQuery(payment_id=payment["id"], provider_ref=payment["provider_ref"],
                                                                      amount=payment["amount"], currency=payment["currency"]))
            closed += attempt.succeeded
            await self._db.write(lambda tx, p=payment, a=attempt: self._record_close(tx, p, a))
        return closed

    def _record_close(self, tx: Tx, payment: Row, attempt: Attempt) -> None:
        now_ms = self._clock.now_ms()
        self._gateway.record(tx, attempt, payment_id=payment["id"], merchant_id=payment["merchant_id"])
        if attempt.succeeded:
            state = "done"
        elif attempt.outcome == "unknown" and payment["close_attempts"] + 1 < len(self._config.janitor_schedule_s):
            state = "pending"  # asked again at the next run
        else:
            state = "failed"
            if attempt.error_code != "provider_flow_not_supported":  # a channel that cannot close: nothing to say
                log.warning("could not close payment %s at %s: %s", payment["id"], payment["channel"], attempt.error_code)
        orders.set_close_state(tx, payment_id=payment["id"], state=state, now_ms=now_ms)
        if self._claims:
            store.release_payment(tx, payment_id=payment["id"])

"""Refunds: full or partial, several partials up to the captured amount, through the channel.

Like an order, a refund takes two write transactions with the provider call between them:
1. check the order and amount, plan the clawback (and refuse it under the `refuse` policy when
   the player already spent the currency), record the refund `pending`;
2. the channel refunds (outside any transaction);
3. record the outcome. A `succeeded` refund, now or later by callback, posts the ledger
   reversal, takes back what was delivered, and moves the order to `partially_refunded` or
   `refunded`, in one transaction. A send that never got through (`channel_unreachable`) or whose
   outcome is unknown keeps the refund `pending` and queues it for the refund sender job, which
   sends it again after a backoff (`refunds.retry_backoff_s`) under the same idempotency key (the
   refund id, which every adapter passes to its provider): a resend of a refund the provider did
   carry out answers that one, so nothing is refunded or booked twice. After
   `refunds.send_attempts_max` sends, a refund that never reached the provider is `failed` (with
   its alert); one that may have stays `pending` and the janitor asks the provider about it.

What is taken back: virtual currency in proportion to the money refunded so far (floor, computed
cumulatively so that a full refund takes back exactly what was granted); items, memberships and
entitlements when the order is refunded in full. Currency the player already spent follows the
merchant's policy: `refuse` the refund, or claw back into `debt` (a negative balance that later
purchases pay off first). A clawback is the only way a wallet goes below zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.channels.base import RefundRequest, RefundResult
from apss.clock import Clock, format_rfc3339
from apss.config import RefundsConfig
from apss.domain.catalog import (
    CurrencyGrant,
    EntitlementGrant,
    Grant,
    ItemGrant,
    MembershipGrant,
)
from apss.domain.ledger import over_refund_cover_entries, over_refund_entries, reversal_entries
from apss.domain.orders import REFUNDABLE, OrderEvent, OrderStatus
from apss.domain.payments import WALLET_CHANNEL, PaymentStatus
from apss.domain.refunds import REFUND_TRANSITIONS, RefundStatus, resend_delay_s
from apss.errors import (
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NotFound,
)
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.money.ledger import Ledger
from apss.services.orders import lifecycle
from apss.services.payments.gateway import Attempt, PaymentGateway
from apss.services.risk.engine import RiskEngine
from apss.services.views import encode
from apss.store import orders, players
from apss.store import refunds as store
from apss.store.db import Database, Row, Tx

__all__ = ["RefundCreate", "RefundView", "Refunds"]

log = logging.getLogger("apss.refunds")
_grants = msgspec.json.Decoder(list[Grant])
_DAY_MS = 86_400_000


class RefundCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Annotated[int, Meta(ge=1, le=10**15)] | None = None  # default: all that is left
    reason: Annotated[str, Meta(max_length=200)] | None = None


class Clawback(msgspec.Struct, frozen=True, kw_only=True):
    policy: str
    currency: list[dict] = []  # {"currency", "amount", "taken", "debt"}
    items: list[dict] = []  # {"sku", "quantity", "taken"}
    memberships: list[dict] = []  # {"sku", "days"}
    entitlements: list[str] = []


class RefundView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    order_id: str
    payment_id: str
    amount: int
    currency: str
    status: RefundStatus
    reason: str | None
    failure_code: str | None
    clawback: Clawback | None
    created_at: str


class RefundList(msgspec.Struct, frozen=True, kw_only=True):
    """An order's refunds (all of them: has_more is false)."""

    data: list[RefundView]
    has_more: bool
    next_cursor: str | None


def refund_view(row: Row) -> RefundView:
    clawback = msgspec.json.decode(row["clawback"], type=Clawback) if row["clawback"] else None
    return RefundView(id=row["id"], order_id=row["order_id"], payment_id=row["payment_id"], amount=row["amount"],
                      currency=row["currency"], status=row["status"], reason=row["reason"], failure_code=row["failure_code"],
                      clawback=clawback, created_at=format_rfc3339(row["created_at_ms"]))


class Refunds:
    def __init__(self, *, db: Database, clock: Clock, idempotency: Idempotency, gateway: PaymentGateway, ledger: Ledger,
                 merchants: Merchants, batch_max: int, wake_sender: Callable[[], None], risk: RiskEngine,
                 config: RefundsConfig) -> None:
        self._db = db
        self._config = config
        self._clock = clock
        self._idempotency = idempotency
        self._gateway = gateway
        self._ledger = ledger
        self._merchants = merchants
        self._batch_max = batch_max
        self.wake_sender = wake_sender
        self._risk = risk

    # -- create ------------------------------------------------------------------------------
    async def create(self, *, merchant: Merchant, order_id: str, command: RefundCreate, idem: IdempotencyRequest | None) -> Outcome:
        begun = await self._db.write(lambda tx: self._idempotency.begin(
            tx, merchant_id=merchant.id, request=idem, resume=lambda refund_id: f"refund:{refund_id}",
            fn=lambda tx: self._begin(tx, merchant=merchant, order_id=order_id, command=command)))
        if isinstance(begun, Outcome):
            return begun
        return await self._call_channel(merchant=merchant, refund_id=begun, idem_key=idem.key if idem else None)

    def _begin(self, tx: Tx, *, merchant: Merchant, order_id: str, command: RefundCreate) -> str:
        order = orders.get_order_tx(tx, order_id=order_id, merchant_id=merchant.id)
        if order is None:
            raise NotFound(f"No such order: '{order_id}'", param="id")
        payment = orders.get_payment_tx(tx, payment_id=order["payment_id"])
        held = order["status"] == OrderStatus.IN_REVIEW.value
        if (order["status"] not in REFUNDABLE and not held) or payment["status"] != "succeeded":
            raise InvalidTransition(f"An order in status '{order['status']}' cannot be refunded.")
        left = payment["amount"] - store.refunded_total(tx, payment_id=payment["id"], statuses=("pending", "succeeded"))
        amount = command.amount if command.amount is not None else left
        if held and amount != left:
            raise InvalidRequest("An order in review is refunded in full (or rejected: POST /v1/risk/reviews/{id}/reject).",
                                 code="refund_must_be_full", param="amount")
        if amount < 1 or amount > left:
            raise InvalidRequest(f"At most {left} {payment['currency']} can still be refunded.", code="refund_amount_too_large",
                                 param="amount")
        finance = self._ledger.finance(tx, merchant.id)
        succeeded = store.refunded_total(tx, payment_id=payment["id"], statuses=("succeeded",))
        plan = self._plan(tx, order, gross=payment["amount"], before=succeeded, amount=amount, policy=finance.clawback_policy)
        if finance.clawback_policy == "refuse":
            short = [c for c in plan.currency if c["debt"] > 0]
            if short:
                raise Conflict(f"The player already spent {short[0]['debt']} {short[0]['currency']} of this order; "
                               "the merchant's policy refuses the refund.", code="refund_refused_currency_spent", param="amount")
        refund_id, now_ms = new_id("rfd"), self._clock.now_ms()
        store.insert_refund(tx, {"id": refund_id, "merchant_id": merchant.id, "order_id": order_id, "payment_id": payment["id"],
                                 "amount": amount, "currency": payment["currency"], "status": "pending",
                                 "reason": command.reason, "created_at_ms": now_ms})
        return refund_id

    async def _call_channel(self, *, merchant: Merchant, refund_id: str, idem_key: str | None) -> Outcome:
        refund = await store.fetch_refund(self._db, refund_id=refund_id)
        payment = await orders.fetch_payment(self._db, payment_id=refund["payment_id"])
        order = await orders.fetch_order(self._db, order_id=refund["order_id"])
        request = RefundRequest(refund_id=refund_id, payment_id=payment["id"], provider_ref=payment["provider_ref"] or "",
                                amount=refund["amount"], currency=refund["currency"], reason=refund["reason"],
                                metadata=msgspec.json.decode(order["metadata"], type=dict[str, str]))
        if payment["channel"] == WALLET_CHANNEL:  # no provider: the wallet is credited back in the record transaction
            attempt = Attempt(channel=WALLET_CHANNEL, operation="refund", outcome="succeeded",
                              value=RefundResult(provider_refund_ref=f"wallet:{refund_id}", status="succeeded"))
        else:
            attempt = await self._gateway.refund(merchant, payment["channel"], request)

        def record(tx: Tx) -> Outcome:
            if idem_key is not None:
                stored = self._idempotency.finished(tx, merchant_id=merchant.id, key=idem_key)
                if stored is not None:  # the completer answered meanwhile; the outcome still lands
                    self.record_outcome(tx, refund_id=refund_id, payment_id=payment["id"], attempt=attempt)
                    return stored
            self.record_outcome(tx, refund_id=refund_id, payment_id=payment["id"], attempt=attempt)
            outcome = Outcome(status=201, body=encode(refund_view(store.get_refund_tx(tx, refund_id=refund_id))))
            if idem_key is not None:
                self._idempotency.finish(tx, merchant_id=merchant.id, key=idem_key, outcome=outcome)
            return outcome

        return await self._db.write(record)

    def record_outcome(self, tx: Tx, *, refund_id: str, payment_id: str, attempt: Attempt) -> str:
        """What the provider said of a refund: succeeded (now, or `pending` at the provider), a
        definite refusal (`failed`), or no answer: a connection that never got through, or an
        unknown outcome. Then it stays `pending`, queued to be sent again after its backoff (the
        refund id is the provider's idempotency key); it is never booked failed on a guess (the
        money may have gone back)."""
        refund = store.get_refund_tx(tx, refund_id=refund_id)
        merchant_id = refund["merchant_id"]
        self._gateway.record(tx, attempt, payment_id=payment_id, merchant_id=merchant_id)
        store.dequeue(tx, refund_id=refund_id)
        never_sent = attempt.outcome == "failed" and attempt.error_code == "channel_unreachable"
        if attempt.outcome == "unknown" or never_sent:
            sends = store.record_send(tx, refund_id=refund_id, maybe_sent=not never_sent)
            return self._send_again(tx, refund_id=refund_id, sends=sends, attempt=attempt)
        store.record_send(tx, refund_id=refund_id, maybe_sent=True)
        if attempt.outcome == "failed":
            return self.apply_failed(tx, refund_id=refund_id, failure_code=attempt.provider_code or attempt.error_code or "refund_failed")
        result: RefundResult = attempt.value
        if result.provider_refund_ref and refund["provider_refund_ref"] is None:
            store.set_provider_ref(tx, refund_id=refund_id, provider_ref=result.provider_refund_ref)
        if result.status == "succeeded":
            return self.apply_succeeded(tx, refund_id=refund_id, cause=f"refund:{refund_id}")
        if result.status == "failed":
            return self.apply_failed(tx, refund_id=refund_id, failure_code=result.failure_code or "refund_failed")
        return "pending"

    def _send_again(self, tx: Tx, *, refund_id: str, sends: int, attempt: Attempt) -> str:
        """No answer from the provider: queue the refund for its next send, or, after the last one,
        book it `failed` if no send ever reached the provider, else leave it to the janitor."""
        refund = store.get_refund_tx(tx, refund_id=refund_id)
        if refund["status"] != RefundStatus.PENDING.value:  # a callback or the janitor settled it meanwhile
            return refund["status"]
        now_ms = self._clock.now_ms()
        delay_s = resend_delay_s(sends, backoff_s=self._config.retry_backoff_s, sends_max=self._config.send_attempts_max)
        if delay_s is not None:
            store.requeue(tx, refund_id=refund_id, next_send_at_ms=now_ms + delay_s * 1000, now_ms=now_ms)
            log.warning("refund %s: %s (%s) on send %d; sent again in %d s", refund_id, attempt.outcome, attempt.error_code,
                        sends, delay_s)
            return "pending"
        if not refund["maybe_sent"]:  # every send was refused before it left: no money moved
            return self.apply_failed(tx, refund_id=refund_id, failure_code=attempt.error_code or "refund_failed")
        log.warning("refund %s: %s (%s) on its last send; it stays pending until the provider says", refund_id,
                    attempt.outcome, attempt.error_code)
        store.record_check(tx, refund_id=refund_id, checks_done=max(refund["checks_done"], 0), next_check_at_ms=now_ms)
        return "pending"

    async def resume(self, *, merchant: Merchant, refund_id: str, idem_key: str) -> None:
        """Finish a refund request that a crash cut between its transactions (the refund id is
        the provider's idempotency key)."""
        await self._call_channel(merchant=merchant, refund_id=refund_id, idem_key=idem_key)

    async def abandon(self, *, merchant: Merchant, refund_id: str, idem_key: str) -> Outcome:
        """Finish a refund request whose key stayed `running` too long without a crash: the key
        answers the refund as it stands (`pending`: the janitor asks the provider what it did)."""

        def transaction(tx: Tx) -> Outcome:
            stored = self._idempotency.finished(tx, merchant_id=merchant.id, key=idem_key)
            if stored is not None:
                return stored
            outcome = Outcome(status=201, body=encode(refund_view(store.get_refund_tx(tx, refund_id=refund_id))))
            self._idempotency.finish(tx, merchant_id=merchant.id, key=idem_key, outcome=outcome)
            return outcome

        return await self._db.write(transaction)

    def queue_refund(self, tx: Tx, *, payment: Row, reason: str) -> str:
        """A refund APSS decides by itself (a late payment it cannot accept): the rest of the
        payment, `pending`, sent by the refund sender job after this transaction commits."""
        left = payment["amount"] - store.refunded_total(tx, payment_id=payment["id"], statuses=("pending", "succeeded"))
        assert left > 0, payment["id"]
        refund_id = new_id("rfd")
        store.insert_refund(tx, {"id": refund_id, "merchant_id": payment["merchant_id"], "order_id": payment["order_id"],
                                 "payment_id": payment["id"], "amount": left, "currency": payment["currency"],
                                 "status": "pending", "reason": reason, "created_at_ms": self._clock.now_ms(), "queued": 1})
        tx.after_commit(self.wake_sender)
        return refund_id

    async def send_queued(self) -> int:
        """The refund sender job: send each queued refund that is due through the gateway."""
        sent = 0
        for row in await store.queued(self._db, now_ms=self._clock.now_ms(), limit=self._batch_max):
            merchant = self._merchants.by_id(row["merchant_id"])
            await self._call_channel(merchant=merchant, refund_id=row["id"], idem_key=None)
            sent += 1
        return sent

    async def next_send_ms(self) -> int | None:
        """When the next queued refund is due (the sender's due time in a test-clock advance)."""
        return await store.next_send_ms(self._db)

    # -- outcomes (now, or later by callback) -------------------------------------------------
    def apply_chargeback(self, tx: Tx, *, payment: Row, amount: int | None, event_id: str, revoke: bool = True) -> str | None:
        """A dispute the provider opened takes the money back at once: a forced refund (ledger kind
        `chargeback`) of exactly what the provider reports, goods taken back as for a refund with
        the `debt` policy unless the merchant's dispute policy says not to (`revoke`), and an alert.
        Refunds still pending do not shrink it: if they and the chargeback exceed the capture, that
        is an over-refund, alerted and booked as it happened. Returns the refund's id (None when the
        payment never succeeded: nothing to take back). The dispute record (services/disputes) owns
        the `dispute.*` webhooks."""
        if payment["status"] != PaymentStatus.SUCCEEDED.value:
            return None
        amount = amount if amount is not None and amount > 0 else payment["amount"]
        now_ms = self._clock.now_ms()
        refund_id = new_id("rfd")
        store.insert_refund(tx, {"id": refund_id, "merchant_id": payment["merchant_id"], "order_id": payment["order_id"],
                                 "payment_id": payment["id"], "amount": amount, "currency": payment["currency"],
                                 "status": "pending", "reason": "chargeback", "created_at_ms": now_ms})
        lifecycle.raise_alert(tx, merchant_id=payment["merchant_id"], kind="dispute_created", severity="critical",
                              object_id=payment["id"], now_ms=now_ms,
                              message=f"chargeback of {amount} {payment['currency']} on payment {payment['id']}")
        pending = store.refunded_total(tx, payment_id=payment["id"], statuses=("pending",)) - amount
        succeeded = store.refunded_total(tx, payment_id=payment["id"], statuses=("succeeded",))
        if succeeded + amount <= payment["amount"] < succeeded + pending + amount:  # the rest is alerted below
            self._alert_over_refund(tx, payment, total=succeeded + pending + amount)
        applied = self.apply_succeeded(tx, refund_id=refund_id, cause=f"callback:{event_id}", kind="chargeback",
                                       policy="debt", revoke=revoke)
        assert applied == "applied", "a new refund row moves once"
        return refund_id

    def record_store_refund(self, tx: Tx, *, payment: Row, cause: str, amount: int | None = None) -> str | None:
        """The store refunded a purchase itself (Apple's REFUND, Google's voided purchase): the rest
        of the payment (or `amount` of it, at most the rest), booked now as a succeeded refund,
        goods taken back under the `debt` policy (the money is already back with the player: the
        refund cannot be refused). None when nothing is left to refund (refunded before)."""
        left = payment["amount"] - store.refunded_total(tx, payment_id=payment["id"], statuses=("pending", "succeeded"))
        if amount is not None:
            left = min(left, amount)
        if payment["status"] != PaymentStatus.SUCCEEDED.value or left <= 0:
            return None
        refund_id = new_id("rfd")
        store.insert_refund(tx, {"id": refund_id, "merchant_id": payment["merchant_id"], "order_id": payment["order_id"],
                                 "payment_id": payment["id"], "amount": left, "currency": payment["currency"],
                                 "status": "pending", "reason": "store_refund", "created_at_ms": self._clock.now_ms()})
        applied = self.apply_succeeded(tx, refund_id=refund_id, cause=cause, policy="debt", fee_returned=True)
        assert applied == "applied", "a new refund row moves once"
        return refund_id

    def revoke_goods(self, tx: Tx, *, order: Row) -> Clawback:
        """The store withdrew what an order delivered without moving money (Apple's REVOKE: a
        Family Sharing copy ended): everything it granted is taken back as by a full refund,
        under the `debt` policy. The order's status stays: it was not refunded."""
        plan = self._plan(tx, order, gross=1, before=0, amount=1, policy="debt")
        self._take_back(tx, order, plan, refund_id=f"revoke:{order['id']}", now_ms=self._clock.now_ms())
        return plan

    def apply_succeeded(self, tx: Tx, *, refund_id: str, cause: str, kind: str = "refund", policy: str | None = None,
                        revoke: bool = True, fee_returned: bool = False) -> str:
        """Book a refund the provider made. `fee_returned`: the provider gives back its fee in
        proportion (the app stores return their commission on a refund), so it leaves the fee
        expense as the money leaves clearing."""
        refund = store.get_refund_tx(tx, refund_id=refund_id)
        current = RefundStatus(refund["status"])
        if RefundStatus.SUCCEEDED not in REFUND_TRANSITIONS[current]:
            return "stale"
        order = orders.get_order_tx(tx, order_id=refund["order_id"])
        payment = orders.get_payment_tx(tx, payment_id=refund["payment_id"])
        finance = self._ledger.finance(tx, order["merchant_id"])
        before = store.refunded_total(tx, payment_id=payment["id"], statuses=("succeeded",))
        within = max(0, min(refund["amount"], payment["amount"] - before))  # what the capture still covers
        delivered = order["status"] in REFUNDABLE
        plan = self._plan(tx, order, gross=payment["amount"], before=before, amount=within,
                          policy=policy or finance.clawback_policy) if delivered and within and revoke else Clawback(policy="none")
        now_ms = self._clock.now_ms()
        if within and payment["channel"] == WALLET_CHANNEL:
            self._credit_wallet(tx, order, payment, before=before, amount=within, refund_id=refund_id, now_ms=now_ms)
        elif within:
            self._ledger.post(tx, merchant_id=order["merchant_id"], kind=kind, reference=refund_id, entries=reversal_entries(
                merchant_id=order["merchant_id"], channel=payment["channel"], gross=payment["amount"], refunded_before=before,
                amount=within, currency=payment["currency"], commission_bps=finance.commission_bps, splits=finance.splits,
                fee_returned=self._ledger.capture_fee(tx, payment_id=payment["id"]) if fee_returned else 0))
        if within < refund["amount"]:  # the provider returned more than was captured: book it as it happened
            self._ledger.post(tx, merchant_id=order["merchant_id"], kind=kind, reference=f"{refund_id}:over",
                              entries=over_refund_entries(merchant_id=order["merchant_id"], channel=payment["channel"],
                                                          amount=refund["amount"] - within, currency=payment["currency"]))
            self._alert_over_refund(tx, payment, total=before + refund["amount"])
        self._take_back(tx, order, plan, refund_id=refund_id, now_ms=now_ms)
        moved = store.finish_refund(tx, refund_id=refund_id, from_status=current.value, status="succeeded",
                                    failure_code=None, clawback=encode(plan).decode(), now_ms=now_ms)
        assert moved, "read in this transaction"
        tx.emit(merchant_id=order["merchant_id"], type="refund.succeeded", kind="refund", object_id=refund_id)
        if current is RefundStatus.FAILED:
            lifecycle.raise_alert(tx, merchant_id=order["merchant_id"], kind="refund_succeeded_after_failure",
                                  severity="warning", object_id=refund_id, now_ms=now_ms,
                                  message=f"refund {refund_id} was booked failed, then its provider reported it done: applied")
        full = before + refund["amount"] >= payment["amount"]
        if delivered:
            lifecycle.move(tx, order, OrderEvent.REFUND_FULL if full else OrderEvent.REFUND_PARTIAL, cause=cause, now_ms=now_ms)
        elif full and order["status"] == OrderStatus.IN_REVIEW.value:  # nothing was delivered: nothing to take back
            lifecycle.move(tx, order, OrderEvent.REFUND_FULL, cause=cause, now_ms=now_ms)
        self._risk.count_tx(tx, order=order, event="disputes" if kind == "chargeback" else "refunds")
        return "applied"

    def _credit_wallet(self, tx: Tx, order: Row, payment: Row, *, before: int, amount: int, refund_id: str,
                       now_ms: int) -> None:
        """A refund of an order paid from the wallet: the units go back to the wallet, and the
        revenue their spending recognised is deferred again (no money moved either way)."""
        players.apply_wallet_change(tx, txn_id=new_id("wtx"), merchant_id=order["merchant_id"], player_id=order["player_id"],
                                    currency=payment["currency"], amount=amount, reason="refund", order_id=order["id"],
                                    now_ms=now_ms)
        self._ledger.return_currency(tx, merchant_id=order["merchant_id"], vc=payment["currency"],
                                     spend_reference=payment["id"], gross=payment["amount"], refunded_before=before,
                                     amount=amount, reference=refund_id)

    def _alert_over_refund(self, tx: Tx, payment: Row, *, total: int) -> None:
        lifecycle.raise_alert(tx, merchant_id=payment["merchant_id"], kind="over_refund", severity="critical",
                              object_id=payment["id"], now_ms=self._clock.now_ms(),
                              message=f"refunds and chargebacks of payment {payment['id']} come to {total} "
                                      f"{payment['currency']}, more than the {payment['amount']} captured")

    def cover_over_refunds(self, tx: Tx, *, payment_id: str) -> int:
        """A won dispute gave its chargeback back, and with it the capture's room: the refunds that
        landed while the chargeback counted, booked in part as over-refunds against the merchant's
        payable, are covered again as far as the capture now reaches (oldest first) and re-booked as
        plain refunds, shared out as any refund is (kind `refund`, reference `<refund id>:over:covered`,
        once per refund). Returns the amount covered."""
        over = [row for row in store.over_refunds_tx(tx, payment_id=payment_id) if not row["covered"]]
        if not over:
            return 0
        payment = orders.get_payment_tx(tx, payment_id=payment_id)
        finance = self._ledger.finance(tx, payment["merchant_id"])
        counted = store.refunded_total(tx, payment_id=payment_id, statuses=("succeeded",))  # the won chargeback aside
        within = counted - sum(row["over_amount"] for row in over)  # what the capture covers already
        covered = 0
        for row in over:
            amount = min(row["over_amount"], payment["amount"] - within)
            if amount <= 0:
                break
            entries = over_refund_cover_entries(
                merchant_id=payment["merchant_id"], channel=payment["channel"], gross=payment["amount"],
                refunded_before=within, amount=amount, currency=payment["currency"],
                commission_bps=finance.commission_bps, splits=finance.splits)
            if entries:
                self._ledger.post(tx, merchant_id=payment["merchant_id"], kind="refund",
                                  reference=f"{row['id']}:over:covered", entries=entries,
                                  memo=f"{amount} of refund {row['id']} covered by the capture again")
            within += amount
            covered += amount
        return covered

    def apply_failed(self, tx: Tx, *, refund_id: str, failure_code: str) -> str:
        refund = store.get_refund_tx(tx, refund_id=refund_id)
        if RefundStatus.FAILED not in REFUND_TRANSITIONS[RefundStatus(refund["status"])]:
            return "stale"
        moved = store.finish_refund(tx, refund_id=refund_id, from_status=refund["status"], status="failed",
                                    failure_code=failure_code, clawback=None, now_ms=self._clock.now_ms())
        assert moved, "read in this transaction"
        tx.emit(merchant_id=refund["merchant_id"], type="refund.failed", kind="refund", object_id=refund_id)
        lifecycle.raise_alert(tx, merchant_id=refund["merchant_id"], kind="refund_failed", severity="warning",
                              object_id=refund_id, now_ms=self._clock.now_ms(),
                              message=f"refund {refund_id} of order {refund['order_id']} failed: {failure_code}")
        return "applied"

    def find(self, tx: Tx, *, refund_id: str | None, provider_ref: str | None) -> Row | None:
        row = store.get_refund_tx(tx, refund_id=refund_id) if refund_id else None
        if row is None and provider_ref:
            row = store.refund_by_provider_ref(tx, provider_ref=provider_ref)
        return row

    # -- clawback ----------------------------------------------------------------------------
    def _plan(self, tx: Tx, order: Row, *, gross: int, before: int, amount: int, policy: str) -> Clawback:
        full = before + amount == gross
        currency: dict[str, int] = {}
        items, memberships, entitlements = [], [], []
        for line in orders.order_items_tx(tx, order["id"]):
            for grant in _grants.decode(line["grants"]):
                if isinstance(grant, CurrencyGrant):
                    granted = grant.amount * line["quantity"]
                    # cumulative floor: a full refund takes back exactly what was granted
                    take = granted * (before + amount) // gross - granted * before // gross
                    currency[grant.currency] = currency.get(grant.currency, 0) + take
                elif full and isinstance(grant, ItemGrant):
                    items.append({"sku": grant.sku, "quantity": grant.quantity * line["quantity"]})
                elif full and isinstance(grant, MembershipGrant):
                    memberships.append({"sku": grant.sku, "days": grant.duration_days * line["quantity"]})
                elif full and isinstance(grant, EntitlementGrant):
                    entitlements.append(grant.sku)
        planned = []
        for code, take in sorted(currency.items()):
            if take <= 0:
                continue
            balance = players.get_balance_tx(tx, merchant_id=order["merchant_id"], player_id=order["player_id"], currency=code)
            planned.append({"currency": code, "amount": take, "taken": min(take, max(balance, 0)),
                            "debt": take - min(take, max(balance, 0))})
        for item in items:
            have = players.item_quantity_tx(tx, merchant_id=order["merchant_id"], player_id=order["player_id"], sku=item["sku"])
            item["taken"] = min(have, item["quantity"])
        return Clawback(policy=policy, currency=planned, items=items, memberships=memberships, entitlements=entitlements)

    def _take_back(self, tx: Tx, order: Row, plan: Clawback, *, refund_id: str, now_ms: int) -> None:
        merchant_id, player_id = order["merchant_id"], order["player_id"]
        for line in plan.currency:
            # Under `refuse`, spending after the refund began can still leave a shortfall: the
            # money is already back with the payer, so the debt is recorded either way.
            players.apply_wallet_change(tx, txn_id=new_id("wtx"), merchant_id=merchant_id, player_id=player_id,
                                        currency=line["currency"], amount=-line["amount"], reason=f"refund {refund_id}",
                                        order_id=order["id"], now_ms=now_ms)
            self._ledger.take_currency(tx, merchant_id=merchant_id, vc=line["currency"], units=line["amount"],
                                       reference=f"{refund_id}:{line['currency']}", spent=False)
        for item in plan.items:
            if item["taken"]:
                players.remove_items(tx, merchant_id=merchant_id, player_id=player_id, sku=item["sku"], quantity=item["taken"],
                                     now_ms=now_ms)
        for membership in plan.memberships:
            players.shorten_membership(tx, merchant_id=merchant_id, player_id=player_id, sku=membership["sku"],
                                       duration_ms=membership["days"] * _DAY_MS, now_ms=now_ms)
        for sku in plan.entitlements:
            players.remove_entitlement(tx, merchant_id=merchant_id, player_id=player_id, sku=sku, order_id=order["id"])

    # -- reads -------------------------------------------------------------------------------
    async def get(self, *, merchant_id: str, refund_id: str) -> RefundView:
        row = await store.fetch_refund(self._db, refund_id=refund_id)
        if row is None or row["merchant_id"] != merchant_id:
            raise NotFound(f"No such refund: '{refund_id}'", param="id")
        return refund_view(row)

    async def for_order(self, *, merchant_id: str, order_id: str) -> list[RefundView]:
        return [refund_view(r) for r in await store.list_for_order(self._db, merchant_id=merchant_id, order_id=order_id)]

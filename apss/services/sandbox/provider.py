"""The sandbox provider: the payer's Pay / Fail (page or API), its signed callbacks, and its book
(apss.channels.sandbox.SandboxBook): what the payer did, which payments it closed, which refunds
it executed.

It never changes an order itself. A payment it closed (the closer asks when its order ended
unpaid) refuses the payer: PaymentClosed, no completion and no callback. Completing a payment records the provider's outcome and
queues a signed callback in its own outbox (sandbox_callbacks), in one transaction; a job sends
the callbacks after commit to `/v1/channels/sandbox/webhook/{merchant}` — over HTTP to
server.public_url, or through the ASGI app in process — and retries with backoff until a 2xx.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Annotated, Literal

import httpx
import msgspec
from msgspec import Meta

from apss.channels.base import DisputeEvidence, RefundRequest, RefundResult
from apss.channels.sandbox import (
    THREE_DS_SUFFIX,
    build_event,
    card_of,
    needs_challenge,
    parse_magic,
    send_callback,
)
from apss.channels.sandbox.mapping import SandboxDisputeData
from apss.clock import Clock
from apss.config import Config
from apss.domain.payments import CallbackKind
from apss.errors import (
    ChannelNotAvailable,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    PaymentClosed,
)
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.views import SandboxActionView
from apss.store import disputes as dispute_store
from apss.store import orders
from apss.store import sandbox as store
from apss.store.db import Database, Row, Tx

__all__ = ["SandboxDisputeClose", "SandboxDisputeCreate", "SandboxDisputeView", "SandboxProvider"]

log = logging.getLogger("apss.sandbox")
_SEND_CONCURRENCY_MAX = 64
_BATCH_MAX = 200
_BACKOFF_S_MAX = 600
_EVIDENCE_DUE_S = 7 * 86_400  # the sandbox gives a week to answer


class SandboxDisputeCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Annotated[int, Meta(ge=1, le=10**15)] | None = None  # default: the whole payment
    reason: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z_]+$")] = "fraudulent"


class SandboxDisputeClose(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    outcome: Literal["won", "lost"]


class SandboxDisputeView(msgspec.Struct, frozen=True, kw_only=True):
    sandbox_dispute_id: str  # the provider's id (the dispute record's provider_dispute_id)
    payment_id: str
    status: str


class SandboxProvider:
    def __init__(self, *, db: Database, clock: Clock, wall_clock: Clock, config: Config, merchants: Merchants,
                 idempotency: Idempotency, wake: Callable[[], None]) -> None:
        """`wall_clock` stamps the callbacks' signatures, as a real provider would: the receiver
        checks their tolerance against the wall clock, also when `clock` is a moved test clock."""
        self._db = db
        self._clock = clock
        self._wall_clock = wall_clock
        self._config = config
        self._merchants = merchants
        self._idempotency = idempotency
        self.wake = wake  # pokes the sender job after a commit
        self._queued = asyncio.Event()  # a callback was queued (wakes a running sender)
        self.client: httpx.AsyncClient | None = None  # given at start (HTTP, or ASGI to the app itself)

    def start(self, client: httpx.AsyncClient) -> None:
        """The sender's HTTP client: given at start, since the ASGI transport needs the app."""
        assert self.client is None, "started twice"
        self.client = client

    # -- the payer acts ----------------------------------------------------------------------
    async def complete(self, *, merchant: Merchant, payment_id: str, pay: bool, idem: IdempotencyRequest | None) -> Outcome:
        if merchant.mode != "test":
            raise ChannelNotAvailable("The sandbox works for test merchants only.")

        def transaction(tx: Tx) -> SandboxActionView:
            payment = orders.get_payment_tx(tx, payment_id=payment_id)
            if payment is None or payment["merchant_id"] != merchant.id:
                raise NotFound(f"No such payment: '{payment_id}'", param="payment_id")
            return self._complete(tx, payment, pay=pay)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction, success_status=202)

    async def complete_by_ref(self, *, provider_ref: str, pay: bool, challenge: str | None = None) -> SandboxActionView:
        """The payer page's buttons: the unguessable provider reference is the capability.
        `challenge`: the payer's choice on the 3-D Secure step ("pass" | "fail")."""

        def transaction(tx: Tx) -> SandboxActionView:
            payment = orders.payment_by_provider_ref(tx, channel="sandbox", provider_ref=provider_ref)
            if payment is None:
                raise NotFound("No such sandbox payment.")
            return self._complete(tx, payment, pay=pay, challenge=challenge)

        return await self._db.write(transaction)

    # -- its book (SandboxBook) ---------------------------------------------------------------
    async def state_of(self, payment_id: str) -> tuple[str, str | None] | None:
        """What the sandbox provider knows of a payment (its answer to a status query)."""
        row = await store.fetch_completion(self._db, payment_id=payment_id)
        if row is not None:
            return row["outcome"], row["failure_code"]
        return None if await store.fetch_closed(self._db, payment_id=payment_id) is None else ("closed", None)

    async def close(self, payment_id: str) -> bool:
        """Close the payment unless the payer paid it; closing twice, or after a failed attempt, is fine."""

        def transaction(tx: Tx) -> bool:
            completed = store.completion(tx, payment_id=payment_id)
            if completed is not None and completed["outcome"] == "succeeded":
                return False
            if store.closed(tx, payment_id=payment_id) is None:
                payment = orders.get_payment_tx(tx, payment_id=payment_id)
                assert payment is not None and payment["channel"] == "sandbox", payment_id
                store.insert_closed(tx, payment_id=payment_id, merchant_id=payment["merchant_id"], now_ms=self._clock.now_ms())
            return True

        return await self._db.write(transaction)

    async def record_refund(self, request: RefundRequest, result: RefundResult) -> RefundResult:
        assert result.status in ("succeeded", "failed"), "the sandbox settles refunds at once"

        def transaction(tx: Tx) -> RefundResult:
            first = store.refund(tx, refund_id=request.refund_id)
            if first is None:
                kept = result
                if result.status == "succeeded" and dispute_store.sandbox_payment_disputed(tx, payment_id=request.payment_id):
                    # As card providers do (Stripe's `charge_disputed`): the payer's bank already
                    # took the money back, or is deciding whether to.
                    kept = RefundResult(provider_refund_ref=result.provider_refund_ref, status="failed",
                                        failure_code="charge_disputed")
                store.insert_refund(tx, refund_id=request.refund_id, payment_id=request.payment_id,
                                    provider_refund_ref=kept.provider_refund_ref, amount=request.amount,
                                    currency=request.currency, status=kept.status, failure_code=kept.failure_code,
                                    now_ms=self._clock.now_ms())
                return kept
            assert (first["payment_id"], first["amount"]) == (request.payment_id, request.amount), "one refund id, one refund"
            return _refund_result(first)

        return await self._db.write(transaction)

    async def refund_of(self, refund_id: str) -> RefundResult | None:
        row = await store.fetch_refund(self._db, refund_id=refund_id)
        return None if row is None else _refund_result(row)

    # -- disputes the sandbox raises and closes ------------------------------------------------
    async def raise_dispute(self, *, merchant: Merchant, payment_id: str, command: SandboxDisputeCreate,
                            idem: IdempotencyRequest | None) -> Outcome:
        """The payer's bank disputes a paid sandbox payment: the sandbox sends `dispute.created`."""
        if merchant.mode != "test":
            raise ChannelNotAvailable("The sandbox works for test merchants only.")

        def transaction(tx: Tx) -> SandboxDisputeView:
            payment = orders.get_payment_tx(tx, payment_id=payment_id)
            if payment is None or payment["merchant_id"] != merchant.id:
                raise NotFound(f"No such payment: '{payment_id}'", param="payment_id")
            if payment["channel"] != "sandbox":
                raise ChannelNotAvailable(f"Payment '{payment_id}' is not a sandbox payment.", param="payment_id")
            completed = store.completion(tx, payment_id=payment_id)
            if completed is None or completed["outcome"] != "succeeded":
                raise InvalidTransition("Only a paid sandbox payment can be disputed.")
            amount = command.amount if command.amount is not None else payment["amount"]
            if amount > payment["amount"]:
                raise InvalidRequest(f"At most {payment['amount']} {payment['currency']} can be disputed.",
                                     code="dispute_amount_too_large", param="amount")
            now_ms = self._clock.now_ms()
            dispute = SandboxDisputeData(id=f"sbxdp_{new_id('evt')[4:]}", status="needs_response", reason=command.reason,
                                         evidence_due_by=now_ms // 1000 + _EVIDENCE_DUE_S)
            dispute_store.insert_sandbox_dispute(tx, {"id": dispute.id, "merchant_id": merchant.id, "payment_id": payment_id,
                                                      "amount": amount, "currency": payment["currency"],
                                                      "reason": command.reason, "status": dispute.status,
                                                      "created_at_ms": now_ms})
            self._queue_dispute_event(tx, payment, dispute, amount=amount, kind=CallbackKind.DISPUTE_CREATED)
            return SandboxDisputeView(sandbox_dispute_id=dispute.id, payment_id=payment_id, status=dispute.status)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction, success_status=202)

    async def close_dispute(self, *, merchant: Merchant, dispute_id: str, command: SandboxDisputeClose,
                            idem: IdempotencyRequest | None) -> Outcome:
        """The bank decides: `dispute.closed` with the outcome. `dispute_id` is the sandbox's
        (`sbxdp_...`) or APSS's record of it (`dsp_...`)."""
        if merchant.mode != "test":
            raise ChannelNotAvailable("The sandbox works for test merchants only.")

        def transaction(tx: Tx) -> SandboxDisputeView:
            sandbox_id = dispute_id
            record = dispute_store.get_dispute_tx(tx, dispute_id=dispute_id) if dispute_id.startswith("dsp_") else None
            if record is not None and record["merchant_id"] == merchant.id and record["channel"] == "sandbox":
                sandbox_id = record["provider_dispute_id"]
            row = dispute_store.sandbox_dispute_tx(tx, dispute_id=sandbox_id)
            if row is None or row["merchant_id"] != merchant.id:
                raise NotFound(f"No such sandbox dispute: '{dispute_id}'", param="id")
            if row["status"] in ("won", "lost"):
                raise InvalidTransition(f"The sandbox dispute is {row['status']} already.")
            dispute_store.set_sandbox_dispute(tx, dispute_id=row["id"], status=command.outcome)
            payment = orders.get_payment_tx(tx, payment_id=row["payment_id"])
            dispute = SandboxDisputeData(id=row["id"], status=command.outcome, reason=row["reason"])
            self._queue_dispute_event(tx, payment, dispute, amount=row["amount"], kind=CallbackKind.DISPUTE_CLOSED)
            return SandboxDisputeView(sandbox_dispute_id=row["id"], payment_id=row["payment_id"], status=command.outcome)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction, success_status=202)

    def _queue_dispute_event(self, tx: Tx, payment: Row, dispute: SandboxDisputeData, *, amount: int,
                             kind: CallbackKind) -> None:
        now_ms = self._clock.now_ms()
        event_id = new_id("evt")
        body = build_event(event_id=event_id, kind=kind, created_s=now_ms // 1000, payment_id=payment["id"], amount=amount,
                           currency=payment["currency"], provider_ref=payment["provider_ref"], dispute=dispute)
        store.insert_callback(tx, event_id=event_id, merchant_id=payment["merchant_id"], body=body, deliver_at_ms=now_ms)
        tx.after_commit(self._callback_queued)

    async def record_dispute_evidence(self, evidence: DisputeEvidence) -> str | None:
        """SandboxBook: keep the evidence; an open dispute goes under review."""

        def transaction(tx: Tx) -> str | None:
            row = dispute_store.sandbox_dispute_tx(tx, dispute_id=evidence.provider_dispute_id)
            if row is None or row["payment_id"] != evidence.payment_id:
                return None
            if row["status"] in ("won", "lost"):
                return row["status"]
            dispute_store.set_sandbox_dispute(tx, dispute_id=row["id"], status="under_review",
                                              evidence=msgspec.json.encode(evidence.fields).decode())
            return "under_review"

        return await self._db.write(transaction)

    # -- the payer page ------------------------------------------------------------------------
    async def payer_page_data(self, provider_ref: str) -> Row | None:
        return await orders.payment_by_provider_ref_async(self._db, channel="sandbox", provider_ref=provider_ref)

    async def needs_challenge(self, payment: Row) -> bool:
        """Does paying this payment on the payer page go through the 3-D Secure step first?"""
        order = await orders.fetch_order(self._db, order_id=payment["order_id"])
        return needs_challenge(msgspec.json.decode(order["metadata"], type=dict[str, str]),
                               provider_ref=payment["provider_ref"])

    async def is_closed(self, payment_id: str) -> bool:
        return await store.fetch_closed(self._db, payment_id=payment_id) is not None

    def _complete(self, tx: Tx, payment: Row, *, pay: bool, challenge: str | None = None) -> SandboxActionView:
        if payment["channel"] != "sandbox":
            raise ChannelNotAvailable(f"Payment '{payment['id']}' is not a sandbox payment.", param="payment_id")
        if payment["provider_ref"] is None:
            raise InvalidTransition("The sandbox has not created this payment yet.")
        if store.completion(tx, payment_id=payment["id"]) is not None:
            raise InvalidTransition("The payer already completed this sandbox payment.")
        if store.closed(tx, payment_id=payment["id"]) is not None:
            raise PaymentClosed("This sandbox payment was closed: its order ended, and nothing can be paid.")
        order = orders.get_order_tx(tx, order_id=payment["order_id"])
        metadata = msgspec.json.decode(order["metadata"], type=dict[str, str])
        outcome = parse_magic(metadata, payer_pays=pay, three_ds=payment["provider_ref"].endswith(THREE_DS_SUFFIX),
                              challenge=challenge)
        now_ms = self._clock.now_ms()
        store.insert_completion(tx, payment_id=payment["id"], merchant_id=payment["merchant_id"],
                                outcome="succeeded" if outcome.succeeded else "failed",
                                failure_code=outcome.failure_code, now_ms=now_ms)
        event_id = new_id("evt")
        body = build_event(
            event_id=event_id, kind=CallbackKind.PAYMENT_SUCCEEDED if outcome.succeeded else CallbackKind.PAYMENT_FAILED,
            created_s=now_ms // 1000, payment_id=payment["id"], amount=payment["amount"], currency=payment["currency"],
            provider_ref=payment["provider_ref"], failure_code=outcome.failure_code,
            card=card_of(metadata) if outcome.succeeded else None)
        for _ in range(outcome.copies):  # `duplicate_callback` sends the same event twice
            store.insert_callback(tx, event_id=event_id, merchant_id=payment["merchant_id"], body=body,
                                  deliver_at_ms=now_ms + outcome.delay_s * 1000)
        tx.after_commit(self._callback_queued)
        return SandboxActionView(payment_id=payment["id"], status="processing")

    # -- the provider sends ------------------------------------------------------------------
    async def next_callback_ms(self) -> int | None:
        """When the next callback is due (the sender job's due time in a test-clock advance)."""
        return await store.next_callback_ms(self._db)

    async def deliver_due(self) -> int:
        """Send every callback that is due, `_SEND_CONCURRENCY_MAX` at a time, oldest due first;
        returns how many were delivered. The sender is continuous: a free slot takes the next due
        callback at once (one slow answer holds up only its own slot), and each answer is recorded
        as it comes (delivered, or retried with backoff, or given up after
        `sandbox.callback_attempts_max`). It returns when nothing is due and nothing is on its way;
        callbacks queued meanwhile are taken in the same run."""
        assert self.client is not None, "sandbox HTTP client not wired"
        waiting: deque[Row] = deque()  # fetched, due, not yet taken
        sending: dict[asyncio.Task[bool], int] = {}  # a callback on its way (until recorded) -> its seq
        delivered = 0
        try:
            while True:
                if not waiting and len(sending) < _SEND_CONCURRENCY_MAX:
                    self._queued.clear()  # set again by a commit that queues one after this read
                    rows = await store.due_callbacks(self._db, now_ms=self._clock.now_ms(),
                                                     limit=len(sending) + _BATCH_MAX)
                    busy = set(sending.values())
                    waiting.extend(row for row in rows if row["seq"] not in busy)
                while waiting and len(sending) < _SEND_CONCURRENCY_MAX:
                    row = waiting.popleft()
                    sending[asyncio.create_task(self._send_one(row))] = row["seq"]
                if not sending:
                    return delivered
                # With a slot free and nothing fetched left, a callback queued from now on is taken
                # as soon as it commits, not after the next answer.
                idle = not waiting and len(sending) < _SEND_CONCURRENCY_MAX
                news = asyncio.create_task(self._queued.wait()) if idle else None
                done, _ = await asyncio.wait([*sending, *([news] if news else [])], return_when=asyncio.FIRST_COMPLETED)
                if news is not None:
                    news.cancel()
                for task in done:
                    if task is not news:
                        del sending[task]
                        delivered += task.result()  # a failed record raises: the run ends, the rest is cancelled
        finally:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)

    async def _send_one(self, row: Row) -> bool:
        """Send one callback and record the answer; True when it was delivered."""
        merchant = self._merchants.by_id(row["merchant_id"])
        url = f"{self._config.public_url}/v1/channels/sandbox/webhook/{row['merchant_id']}"
        try:
            status = await send_callback(client=self.client, url=url, secret=merchant.sandbox_webhook_secret,
                                         body=bytes(row["body"]), now_s=self._wall_clock.now_ms() // 1000)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__

        def record(tx: Tx) -> None:
            now_ms = self._clock.now_ms()
            tried = row["attempts"] + 1
            retry_at = None
            if error is not None and tried < self._config.sandbox.callback_attempts_max:
                retry_at = now_ms + min(2 ** tried, _BACKOFF_S_MAX) * 1000
            store.mark_attempt(tx, seq=row["seq"], delivered=error is None, error=error, retry_at_ms=retry_at, now_ms=now_ms)

        await self._db.write(record)
        if error is not None:
            log.warning("sandbox callback %s not delivered: %s", row["seq"], error)
        return error is None

    def _callback_queued(self) -> None:
        """After the commit of a queued callback: a running sender takes it; otherwise the job starts."""
        self._queued.set()
        self.wake()


def _refund_result(row: Row) -> RefundResult:
    return RefundResult(provider_refund_ref=row["provider_refund_ref"], status=row["status"], failure_code=row["failure_code"])

"""The payment gateway: the one door every provider call goes through.

Order creation, refunds, captures, the janitor's status queries and the closing of unpaid
payments all call providers here, never a channel directly, so one policy decides what an answer
means (Saleor's payment facade, Hyperswitch's flows):
- succeeded: the channel answered;
- failed: a definite refusal, nothing was done at the provider (ProviderDeclined with the
  provider's code, or a request the channel cannot take: InvalidRequest, an unsupported flow);
- unknown: the provider may have done it (timeout, 5xx, an unreadable answer, any other
  exception). Unknown is never guessed: payments stay `unknown` and the janitor asks the
  provider later; refunds stay `pending` and are sent again under their idempotency key (so are
  refunds whose connection never got through: services/refunds).
Every call is recorded: the intent before it (the payment `unknown` or refund `pending` row the
caller's first transaction wrote), and the attempt after it (`record`, in the caller's next
transaction, with every provider id the answer named). Failures that say something about the
provider's health (unknown outcomes) feed the merchant's circuit breaker; refusals do not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

from apss.channels.base import (
    Capability,
    DisputeEvidence,
    PaymentCreated,
    PaymentQuery,
    PaymentReport,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
)
from apss.clock import Clock
from apss.errors import (
    ApssError,
    ChannelUnreachable,
    InvalidRequest,
    ProviderDeclined,
    ProviderFlowNotSupported,
)
from apss.services.merchants.keys import Merchant
from apss.services.orders import lifecycle
from apss.services.payments.channels import ChannelAccess
from apss.store import channels as channel_store
from apss.store import orders
from apss.store.db import Tx

__all__ = ["Attempt", "PaymentGateway"]

log = logging.getLogger("apss.gateway")

Outcome = Literal["succeeded", "failed", "unknown"]


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One provider call and how it ended."""

    channel: str
    operation: str  # a Capability value, or query_payment / query_refund
    outcome: Outcome
    value: Any = None  # the channel's answer when it succeeded
    error_code: str | None = None  # ours (provider_declined, channel_timeout, provider_error...)
    provider_code: str | None = None  # the provider's own code for a refusal

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"

    def refs(self) -> list[str]:
        """Every provider id the answer named."""
        value = self.value
        if isinstance(value, PaymentCreated):
            return [value.provider_ref, *value.provider_refs]
        if isinstance(value, PaymentReport):
            return [r for r in (value.provider_ref, *value.provider_refs) if r]
        return []


class PaymentGateway:
    def __init__(self, *, channels: ChannelAccess, clock: Clock) -> None:
        self._channels = channels
        self._clock = clock

    @property
    def registry(self):
        return self._channels.registry

    def supports(self, channel: str, capability: Capability) -> bool:
        return self._channels.registry.supports(channel, capability)

    # -- the calls ---------------------------------------------------------------------------
    async def create_payment(self, merchant: Merchant, channel: str, request: PaymentRequest) -> Attempt:
        adapter = self._channels.registry.capable(channel, Capability.CREATE_PAYMENT)
        return await self._call(merchant, channel, Capability.CREATE_PAYMENT.value,
                                lambda credentials: adapter.create_payment(request, credentials))

    def create_payment_locally(self, merchant: Merchant, channel: str, request: PaymentRequest) -> Attempt:
        """`create_payment` for a channel that creates payments in this process, called inside a
        write transaction (no I/O, no await). The breaker lives on the event loop: the caller
        hands it the attempt it uses after commit (`feed_breaker`)."""
        adapter = self._channels.registry.capable(channel, Capability.CREATE_PAYMENT_LOCALLY)
        operation = Capability.CREATE_PAYMENT.value
        try:
            value = adapter.create_payment_locally(request, self._channels.credentials(merchant, self._channels.registry.get(channel)))
        except Exception as error:
            attempt = self._failed(channel, operation, error)
        else:
            attempt = Attempt(channel=channel, operation=operation, outcome="succeeded", value=value)
        return attempt

    async def refund(self, merchant: Merchant, channel: str, request: RefundRequest) -> Attempt:
        return await self._optional(merchant, channel, Capability.REFUND, "refund",
                                    lambda adapter, credentials: adapter.refund(request, credentials))

    async def capture(self, merchant: Merchant, channel: str, query: PaymentQuery) -> Attempt:
        return await self._optional(merchant, channel, Capability.CAPTURE, "capture",
                                    lambda adapter, credentials: adapter.capture_payment(query, credentials))

    async def query_payment(self, merchant: Merchant, channel: str, query: PaymentQuery) -> Attempt:
        return await self._optional(merchant, channel, Capability.QUERY_STATUS, "query_payment",
                                    lambda adapter, credentials: adapter.query_payment(query, credentials))

    async def query_refund(self, merchant: Merchant, channel: str, query: RefundQuery) -> Attempt:
        return await self._optional(merchant, channel, Capability.QUERY_REFUND, "query_refund",
                                    lambda adapter, credentials: adapter.query_refund(query, credentials))

    async def charge_saved_method(self, merchant: Merchant, channel: str, request: PaymentRequest, method_ref: str) -> Attempt:
        """A renewal: charge the method a first payment saved (`method_ref` is that payment's
        provider reference; each adapter knows how to reach the saved method from it)."""
        return await self._optional(merchant, channel, Capability.CHARGE_SAVED_METHOD, Capability.CHARGE_SAVED_METHOD.value,
                                    lambda adapter, credentials: adapter.charge_saved_method(request, method_ref, credentials))

    async def cancel_payment(self, merchant: Merchant, channel: str, query: PaymentQuery) -> Attempt:
        return await self._optional(merchant, channel, Capability.CANCEL_PAYMENT, "cancel_payment",
                                    lambda adapter, credentials: adapter.cancel_payment(query, credentials))

    async def submit_dispute_evidence(self, merchant: Merchant, channel: str, evidence: DisputeEvidence) -> Attempt:
        """Answer a dispute with evidence (Stripe `POST /v1/disputes/{id}` with `submit=true`)."""
        return await self._optional(merchant, channel, Capability.SUBMIT_DISPUTE_EVIDENCE,
                                    Capability.SUBMIT_DISPUTE_EVIDENCE.value,
                                    lambda adapter, credentials: adapter.submit_dispute_evidence(evidence, credentials))

    async def _optional(self, merchant: Merchant, channel: str, capability: Capability, operation: str,
                        call: Callable[[Any, Any], Awaitable[Any]]) -> Attempt:
        """A capability the channel may lack: then a definite `failed` (nothing was sent)."""
        if not self._channels.registry.supports(channel, capability):
            return Attempt(channel=channel, operation=operation, outcome="failed", error_code="provider_flow_not_supported")
        adapter = self._channels.registry.get(channel)
        return await self._call(merchant, channel, operation, lambda credentials: call(adapter, credentials))

    async def _call(self, merchant: Merchant, channel: str, operation: str,
                    call: Callable[[Any], Awaitable[Any]]) -> Attempt:
        started = time.monotonic()
        try:
            credentials = self._channels.credentials(merchant, self._channels.registry.get(channel))
            value = await call(credentials)
        except Exception as error:
            attempt = self._failed(channel, operation, error)
        else:
            attempt = Attempt(channel=channel, operation=operation, outcome="succeeded", value=value)
        self.feed_breaker(merchant, attempt)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        if not attempt.succeeded:
            log.warning("%s %s for %s: %s (%s, %d ms)", channel, operation, merchant.id, attempt.outcome,
                        attempt.error_code, elapsed_ms)
        return attempt

    @staticmethod
    def _failed(channel: str, operation: str, error: Exception) -> Attempt:
        """What an adapter's exception says about the provider: `failed` when nothing was done,
        `unknown` when it may have done the work."""
        if isinstance(error, ProviderDeclined):
            return Attempt(channel=channel, operation=operation, outcome="failed", error_code=error.code,
                           provider_code=error.provider_code)
        # InvalidRequest (e.g. a currency it does not take), ProviderFlowNotSupported, and
        # ChannelUnreachable (never sent: nothing was done, but the provider is unhealthy)
        if isinstance(error, InvalidRequest | ProviderFlowNotSupported | ChannelUnreachable):
            return Attempt(channel=channel, operation=operation, outcome="failed", error_code=error.code)
        if isinstance(error, ApssError):  # a timeout, a 5xx, any other typed error: it may have done the work
            return Attempt(channel=channel, operation=operation, outcome="unknown", error_code=error.code)
        # a bug or an odd answer in an adapter: never a 500, never a guess
        log.error("%s %s raised %s", channel, operation, type(error).__name__, exc_info=error)
        return Attempt(channel=channel, operation=operation, outcome="unknown", error_code="provider_error")

    def feed_breaker(self, merchant: Merchant, attempt: Attempt) -> None:
        if attempt.succeeded:
            self._channels.record_success(merchant.id, attempt.channel)
        elif attempt.outcome == "unknown" or attempt.error_code == "channel_unreachable":
            self._channels.record_failure(merchant.id, attempt.channel, attempt.error_code or "unknown")
        elif attempt.error_code == "provider_declined" and attempt.operation == Capability.CREATE_PAYMENT.value:
            # a provider refusing to create any payment (bad key, account closed) is unhealthy too
            self._channels.record_failure(merchant.id, attempt.channel, attempt.provider_code or "declined")

    # -- the record after the call -------------------------------------------------------------
    def record(self, tx: Tx, attempt: Attempt, *, payment_id: str, merchant_id: str, extra_refs: tuple[str, ...] = ()) -> None:
        """Write the attempt and every provider id it named onto the payment; an id that belongs
        to another payment is an anomaly (an alert), never a silent re-assignment."""
        now_ms = self._clock.now_ms()
        channel_store.insert_attempt(tx, payment_id=payment_id, channel=attempt.channel, operation=attempt.operation,
                                     outcome=attempt.outcome, error_code=attempt.error_code,
                                     provider_code=attempt.provider_code, now_ms=now_ms)
        self.acquire(tx, channel=attempt.channel, payment_id=payment_id, merchant_id=merchant_id,
                     refs=[*attempt.refs(), *extra_refs], fresh=isinstance(attempt.value, PaymentCreated))

    def acquire(self, tx: Tx, *, channel: str, payment_id: str, merchant_id: str, refs: list[str],
                fresh: bool = False) -> None:
        """`fresh`: the ids of a payment the provider just created (store/orders.py acquire_refs)."""
        now_ms = self._clock.now_ms()
        for ref in orders.acquire_refs(tx, channel=channel, payment_id=payment_id, refs=refs, now_ms=now_ms,
                                       fresh=fresh):
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="provider_ref_conflict", severity="critical",
                                  object_id=payment_id, now_ms=now_ms,
                                  message=f"{channel} gave payment {payment_id} an id another payment holds: {ref[:64]}")

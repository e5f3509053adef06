"""The sandbox channel for the shared contract test."""

from __future__ import annotations

from apss.channels.base import CallbackRequest, RefundRequest, RefundResult
from apss.channels.sandbox import (
    SIGNATURE_HEADER,
    SandboxChannel,
    build_event,
    sign_callback,
)
from apss.domain.payments import CallbackKind

__all__ = ["Harness", "make_harness"]


class MemoryBook:
    """The sandbox provider's book, in memory (the app keeps it in the database)."""

    def __init__(self) -> None:
        self.closed: set[str] = set()
        self.paid: set[str] = set()
        self.refunds: dict[str, RefundResult] = {}

    async def state_of(self, payment_id: str) -> tuple[str, str | None] | None:
        if payment_id in self.paid:
            return "succeeded", None
        return ("closed", None) if payment_id in self.closed else None

    async def close(self, payment_id: str) -> bool:
        if payment_id in self.paid:
            return False
        self.closed.add(payment_id)
        return True

    async def record_refund(self, request: RefundRequest, result: RefundResult) -> RefundResult:
        return self.refunds.setdefault(request.refund_id, result)

    async def refund_of(self, refund_id: str) -> RefundResult | None:
        return self.refunds.get(refund_id)

    async def record_dispute_evidence(self, evidence) -> str | None:
        return None  # this book raises no disputes


class Harness:
    currency = "USD"

    def __init__(self) -> None:
        self.book = MemoryBook()
        self.channel = SandboxChannel(public_url="http://127.0.0.1:8000", book=self.book)
        self.credentials = {"webhook_secret": "whsec_contract_test_secret_0001"}

    def _request(self, body: bytes, now_s: int) -> CallbackRequest:
        header = sign_callback(secret=self.credentials["webhook_secret"], body=body, now_s=now_s)
        return CallbackRequest(headers={SIGNATURE_HEADER.lower(): header}, body=body, now_s=now_s)

    async def signed_callback(self, *, succeeded: bool, payment_id: str, provider_ref: str, amount: int, currency: str,
                              event_id: str, now_s: int) -> CallbackRequest:
        kind = CallbackKind.PAYMENT_SUCCEEDED if succeeded else CallbackKind.PAYMENT_FAILED
        body = build_event(event_id=event_id, kind=kind, created_s=now_s, payment_id=payment_id, amount=amount,
                           currency=currency, provider_ref=provider_ref, failure_code=None if succeeded else "card_declined")
        return self._request(body, now_s)

    def tamper(self, request: CallbackRequest) -> CallbackRequest:
        body = bytearray(request.body)
        body[body.index(b'"amount":') + 9] ^= 1  # one digit of the amount
        return CallbackRequest(headers=request.headers, body=bytes(body), now_s=request.now_s)

    def stale(self, request: CallbackRequest) -> CallbackRequest:
        """Validly signed, 301 s before the receiver's now."""
        signed_then = self._request(request.body, request.now_s - 301)
        return CallbackRequest(headers=signed_then.headers, body=request.body, now_s=request.now_s)

    async def aclose(self) -> None:
        return None


def make_harness() -> Harness:
    return Harness()

"""The sandbox channel for the shared contract test."""

from __future__ import annotations

from apss.channels.base import CallbackRequest
from apss.channels.sandbox import (
    SIGNATURE_HEADER,
    SandboxChannel,
    build_event,
    sign_callback,
)
from apss.domain.payments import CallbackKind

__all__ = ["Harness", "make_harness"]


class Harness:
    currency = "USD"

    def __init__(self) -> None:
        self.channel = SandboxChannel(public_url="http://127.0.0.1:8000", state=self._state_of)
        self.credentials = {"webhook_secret": "whsec_contract_test_secret_0001"}

    async def _state_of(self, payment_id: str) -> tuple[str, str | None] | None:
        return None  # the payer never acts in the contract test

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

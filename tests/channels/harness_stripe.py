"""The stripe channel wired to the local stand-in, for tests/channels/test_contract.py.

The stand-in makes the PaymentIntent at session creation (as older API versions do), so the
provider_ref the contract test gets back is a pi_ id and the callbacks below are
payment_intent.succeeded / payment_intent.payment_failed events for it. The cs_ (no
PaymentIntent yet) shape is covered in test_stripe.py.
"""

from __future__ import annotations

import secrets

import httpx
import stripe

from apss.channels.base import CallbackRequest
from apss.channels.stripe import StripeChannel
from apss.channels.stripe.client import SIGNATURE_TOLERANCE_S
from apss.channels.stripe.mapping import to_stripe_amount
from tests.channels.standin_stripe import StripeStandIn

__all__ = ["Harness", "make_harness"]

API_BASE = "https://api.stripe.standin.test"


class Harness:
    currency = "USD"

    def __init__(self) -> None:
        self.standin = StripeStandIn(
            secret_key="sk_test_" + secrets.token_hex(16),
            webhook_secret="whsec_" + secrets.token_hex(16),
            pi_on_create=True,
        )
        transport = httpx.ASGITransport(app=self.standin)
        self._http = httpx.AsyncClient(transport=transport, timeout=5.0)
        self.channel = StripeChannel(public_url="https://apss.example.test", http=self._http)
        self.credentials = {
            "secret_key": self.standin.secret_key,
            "webhook_secret": self.standin.webhook_secret,
            "api_base": API_BASE,
        }

    async def signed_callback(
        self, *, succeeded: bool, payment_id: str, provider_ref: str, amount: int, currency: str,
        event_id: str, now_s: int,
    ) -> CallbackRequest:
        intent = {
            "id": provider_ref, "object": "payment_intent", "amount": to_stripe_amount(amount, currency),
            "currency": currency.lower(), "metadata": {"apss_payment_id": payment_id},
            "description": "大乐透 支付成功", "last_payment_error": None,
        }
        if succeeded:
            intent.update(status="succeeded", amount_received=intent["amount"])
            return self.standin.signed_event("payment_intent.succeeded", intent, now_s=now_s, event_id=event_id)
        error = {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"}
        intent.update(status="requires_payment_method", amount_received=0, last_payment_error=error)
        return self.standin.signed_event("payment_intent.payment_failed", intent, now_s=now_s, event_id=event_id)

    def tamper(self, request: CallbackRequest) -> CallbackRequest:
        body = bytearray(request.body)
        middle = len(body) // 2
        body[middle] = ord("b") if body[middle] != ord("b") else ord("c")
        return CallbackRequest(headers=dict(request.headers), body=bytes(body), now_s=request.now_s, query=request.query)

    def stale(self, request: CallbackRequest) -> CallbackRequest | None:
        """Validly re-signed, with a timestamp one second past Stripe's 300 s tolerance."""
        timestamp_s = request.now_s - SIGNATURE_TOLERANCE_S - 1
        header = stripe.WebhookSignature.generate_signature_header(
            request.body.decode(), self.standin.webhook_secret, timestamp=timestamp_s
        )
        headers = {**request.headers, "stripe-signature": header}
        return CallbackRequest(headers=headers, body=request.body, now_s=request.now_s, query=request.query)

    async def aclose(self) -> None:
        await self._http.aclose()


def make_harness() -> Harness:
    return Harness()


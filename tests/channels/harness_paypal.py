"""The PayPal channel wired to the local stand-in, for the shared contract test.

Succeeded callbacks are PAYMENT.CAPTURE.COMPLETED, failed ones PAYMENT.CAPTURE.DENIED (PayPal
does send failure webhooks). The webhook certificate is self-signed and handed to the channel
by an injected cert fetcher, so nothing leaves the process.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
from cryptography import x509

from apss.channels.base import CallbackRequest
from apss.channels.paypal import PayPalChannel
from apss.channels.paypal.client import TRANSMISSION_TOLERANCE_S, check_cert_url
from apss.domain.money import CURRENCY_EXPONENTS
from apss.errors import CallbackRejected
from tests.channels.standin_paypal import (
    CERT_URL,
    PayPalStandin,
    SigningCert,
    capture_resource,
    make_signing_cert,
    rfc3339,
    sign_headers,
)

__all__ = ["Harness", "make_harness"]

API_BASE = "https://api-m.standin.paypal.test"


def paypal_value(amount: int, currency: str) -> str:
    """Minor units to PayPal's decimal string, independently of the channel's own conversion."""
    exponent = CURRENCY_EXPONENTS[currency]
    return f"{Decimal(amount).scaleb(-exponent):.{exponent}f}"


def injected_fetcher(signer: SigningCert):
    async def fetch(url: str) -> x509.Certificate:
        check_cert_url(url)
        if url != CERT_URL:
            raise CallbackRejected("unknown PayPal certificate URL")
        return signer.cert

    return fetch


class Harness:
    currency = "USD"

    def __init__(self) -> None:
        self.signer = make_signing_cert()
        self.credentials = {
            "client_id": "AbCdStandinClient", "client_secret": "EFgh-standin-secret-not-logged",
            "webhook_id": "1JE4291016473214C", "api_base": API_BASE,
        }
        self.standin = PayPalStandin(
            client_id=self.credentials["client_id"], client_secret=self.credentials["client_secret"],
            webhook_id=self.credentials["webhook_id"], signer=self.signer,
        )
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.standin), timeout=5.0)
        self.channel = PayPalChannel(public_url="https://apss.example", http=self.http, cert_fetcher=injected_fetcher(self.signer))

    async def signed_callback(
        self, *, succeeded: bool, payment_id: str, provider_ref: str, amount: int, currency: str, event_id: str, now_s: int
    ) -> CallbackRequest:
        status, event_type = ("COMPLETED", "PAYMENT.CAPTURE.COMPLETED") if succeeded else ("DECLINED", "PAYMENT.CAPTURE.DENIED")
        resource = capture_resource(
            capture_id="3C679366HH908993F", order_id=provider_ref, payment_id=payment_id,
            value=paypal_value(amount, currency), currency=currency, status=status,
        )
        return self.standin.webhook(event_type, resource, event_id=event_id, now_s=now_s)

    def tamper(self, request: CallbackRequest) -> CallbackRequest:
        """Change one digit of the amount: the CRC32 in the signed message no longer matches."""
        body = bytearray(request.body)
        index = request.body.index(b'"value":"') + len(b'"value":"')
        body[index] = ord("7") if body[index] != ord("7") else ord("8")
        return CallbackRequest(headers=dict(request.headers), body=bytes(body), now_s=request.now_s, query=dict(request.query))

    def stale(self, request: CallbackRequest) -> CallbackRequest | None:
        """The same webhook transmitted outside the tolerance, validly re-signed."""
        old_s = request.now_s - TRANSMISSION_TOLERANCE_S - 60
        headers = sign_headers(
            request.body, signer=self.signer, webhook_id=self.credentials["webhook_id"],
            transmission_time=rfc3339(old_s), transmission_id=request.headers["paypal-transmission-id"],
        )
        return CallbackRequest(headers=headers, body=request.body, now_s=request.now_s, query=dict(request.query))

    async def aclose(self) -> None:
        await self.http.aclose()


def make_harness() -> Harness:
    return Harness()

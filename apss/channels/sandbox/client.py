"""The sandbox channel: payment creation (no network: the sandbox lives in this process),
callback signing and verification (`APSS-Sandbox-Signature`, API.md), and the HTTP sender the
sandbox provider uses to deliver its callbacks, over HTTP or through the ASGI app in process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Credentials,
    NextAction,
    PaymentCreated,
    PaymentQuery,
    PaymentReport,
    PaymentRequest,
    RefundRequest,
    RefundResult,
    StatementLine,
)
from apss.channels.sandbox.mapping import (
    MAGIC_KEY,
    decode_event,
    statement_lines,
    to_neutral,
)
from apss.crypto import random_token, sign_timestamped, verify_timestamped
from apss.domain.payments import PaymentStatus
from apss.errors import CallbackRejected, InvalidRequest
from apss.ids import new_token

__all__ = ["SIGNATURE_HEADER", "SandboxChannel", "send_callback", "sign_callback"]

SIGNATURE_HEADER = "APSS-Sandbox-Signature"

# The sandbox provider's record of a payment: (outcome "succeeded" | "failed", failure code), or
# None while the payer has not acted. Injected by app.py: the channel itself touches no database.
SandboxState = Callable[[str], Awaitable[tuple[str, str | None] | None]]


def sign_callback(*, secret: str, body: bytes, now_s: int) -> str:
    return sign_timestamped(secret=secret, timestamp_s=now_s, body=body)


class SandboxChannel:
    name = "sandbox"
    test_only = True
    settings = {}  # the sandbox signs with the merchant's own sandbox_webhook_secret

    def __init__(self, *, public_url: str, state: SandboxState, tolerance_s: int = 300) -> None:
        assert public_url.startswith(("http://", "https://"))
        self._public_url = public_url.rstrip("/")
        self._tolerance_s = tolerance_s
        self._state = state

    def __repr__(self) -> str:
        return "SandboxChannel()"

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        assert request.amount >= 0
        # The provider's own id for the payment doubles as the payer page's unguessable link.
        provider_ref = f"sbx_{new_token()}"
        url = f"{self._public_url}/sandbox/pay/{provider_ref}"
        return PaymentCreated(
            provider_ref=provider_ref,
            status=PaymentStatus.REQUIRES_ACTION,
            next_action=NextAction(type="redirect", url=url),
        )

    async def verify_callback(self, request: CallbackRequest, credentials: Credentials) -> list[CallbackEvent]:
        header = request.headers.get(SIGNATURE_HEADER.lower(), "")
        secret = credentials.get("webhook_secret", "")
        if not header or not secret:
            raise CallbackRejected(f"missing {SIGNATURE_HEADER} header")
        if not verify_timestamped(secrets_allowed=[secret], header=header, body=request.body,
                                  now_s=request.now_s, tolerance_s=self._tolerance_s):
            raise CallbackRejected("sandbox callback signature or timestamp is not valid")
        return [to_neutral(decode_event(request.body))]

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        assert accepted, "rejected callbacks are answered by the error handler (400)"
        return CallbackReply(status_code=200, body=b'{"received":true}', media_type="application/json")

    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult:
        """Refunds settle at once, unless the order's magic value says `refund_fails`."""
        assert request.amount > 0
        if request.metadata.get(MAGIC_KEY) == "refund_fails":
            return RefundResult(provider_refund_ref=f"sbxre_{random_token(16)}", status="failed", failure_code="refund_declined")
        return RefundResult(provider_refund_ref=f"sbxre_{random_token(16)}", status="succeeded")

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        state = await self._state(query.payment_id)
        if state is None:
            return PaymentReport(status=PaymentStatus.REQUIRES_ACTION, provider_ref=query.provider_ref)
        outcome, failure_code = state
        status = PaymentStatus.SUCCEEDED if outcome == "succeeded" else PaymentStatus.FAILED
        return PaymentReport(status=status, provider_ref=query.provider_ref, amount=query.amount,
                             currency=query.currency, failure_code=failure_code)

    def parse_statement(self, data: bytes) -> list[StatementLine]:
        """The sandbox's statement CSV (format in apss/channels/sandbox/mapping.py)."""
        try:
            return statement_lines(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"sandbox statement: {exc}", code="statement_malformed", param="statement") from None


async def send_callback(*, client: httpx.AsyncClient, url: str, secret: str, body: bytes, now_s: int) -> int:
    """POST one signed callback; returns the HTTP status (raises httpx errors on no answer)."""
    headers = {SIGNATURE_HEADER: sign_callback(secret=secret, body=body, now_s=now_s),
               "Content-Type": "application/json", "User-Agent": "APSS-Sandbox/1.0"}
    response = await client.post(url, content=body, headers=headers)
    return response.status_code

"""The sandbox channel: payment creation (no network: the sandbox lives in this process),
callback signing and verification (`APSS-Sandbox-Signature`, API.md), closing, refunds and their
queries, and the HTTP sender the sandbox provider uses to deliver its callbacks, over HTTP or
through the ASGI app in process."""

from __future__ import annotations

from typing import Protocol

import httpx

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Credentials,
    DisputeEvidence,
    DisputeEvidenceResult,
    NextAction,
    PaymentCreated,
    PaymentQuery,
    PaymentReport,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
    RefundResult,
    StatementLine,
)
from apss.channels.sandbox.mapping import (
    MAGIC_KEY,
    THREE_DS_SUFFIX,
    decode_event,
    renewal_decline,
    statement_lines,
    to_neutral,
)
from apss.crypto import random_token, sign_timestamped, verify_timestamped
from apss.domain.payments import PaymentStatus
from apss.errors import CallbackRejected, InvalidRequest, ProviderDeclined
from apss.ids import new_token

__all__ = ["SIGNATURE_HEADER", "SandboxBook", "SandboxChannel", "send_callback", "sign_callback"]

SIGNATURE_HEADER = "APSS-Sandbox-Signature"


class SandboxBook(Protocol):
    """The sandbox provider's own records (services/sandbox/provider.py keeps them in the
    database). Given by app.py at construction: the channel itself touches no database."""

    async def state_of(self, payment_id: str) -> tuple[str, str | None] | None:
        """("succeeded" | "failed", failure code) once the payer acted, ("closed", None) once
        closed unpaid, None while the payer may still act."""
        ...

    async def close(self, payment_id: str) -> bool:
        """Close the payment so the payer can no longer act; False when the payer already paid."""
        ...

    async def record_refund(self, request: RefundRequest, result: RefundResult) -> RefundResult:
        """Keep the refund executed for `request`; the one first kept for its refund id wins. A
        refund of a payment whose dispute is open or lost is kept failed, `charge_disputed`."""
        ...

    async def refund_of(self, refund_id: str) -> RefundResult | None: ...

    async def record_dispute_evidence(self, evidence: DisputeEvidence) -> str | None:
        """Keep the evidence for the sandbox dispute and put it under review; returns the
        dispute's status then, or None when the sandbox has no such dispute."""
        ...


def sign_callback(*, secret: str, body: bytes, now_s: int) -> str:
    return sign_timestamped(secret=secret, timestamp_s=now_s, body=body)


class SandboxChannel:
    name = "sandbox"
    test_only = True
    settings = {}  # the sandbox signs with the merchant's own sandbox_webhook_secret

    def __init__(self, *, public_url: str, book: SandboxBook, tolerance_s: int = 300) -> None:
        assert public_url.startswith(("http://", "https://"))
        self._public_url = public_url.rstrip("/")
        self._tolerance_s = tolerance_s
        self._book = book

    def __repr__(self) -> str:
        return "SandboxChannel()"

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        return self.create_payment_locally(request, credentials)

    def create_payment_locally(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        assert request.amount >= 0
        # The provider's own id for the payment doubles as the payer page's unguessable link.
        # A payment a risk rule sent to 3-D Secure carries it in its reference (not forgeable:
        # the reference is the payer page's capability, and APSS stores it).
        provider_ref = f"sbx_{new_token()}{THREE_DS_SUFFIX if request.three_ds else ''}"
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
        """Refunds settle at once, unless the order's magic value says `refund_fails` or the
        book finds the payment disputed (`charge_disputed`); a retry under the same refund id
        answers what the first one did (the provider's idempotency)."""
        assert request.amount > 0
        ref = f"sbxre_{random_token(16)}"
        if request.metadata.get(MAGIC_KEY) == "refund_fails":
            result = RefundResult(provider_refund_ref=ref, status="failed", failure_code="refund_declined")
        else:
            result = RefundResult(provider_refund_ref=ref, status="succeeded")
        return await self._book.record_refund(request, result)

    async def query_refund(self, query: RefundQuery, credentials: Credentials) -> RefundResult:
        found = await self._book.refund_of(query.refund_id)
        if found is None:  # the sandbox is in this process: a refund it never kept never happened
            return RefundResult(provider_refund_ref=query.provider_refund_ref or query.refund_id, status="failed",
                                failure_code="refund_not_found")
        return found

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        state = await self._book.state_of(query.payment_id)
        if state is None:
            return PaymentReport(status=PaymentStatus.REQUIRES_ACTION, provider_ref=query.provider_ref)
        outcome, failure_code = state
        if outcome == "closed":
            return PaymentReport(status=PaymentStatus.CANCELED, provider_ref=query.provider_ref)
        status = PaymentStatus.SUCCEEDED if outcome == "succeeded" else PaymentStatus.FAILED
        saved = query.provider_ref if status is PaymentStatus.SUCCEEDED else None  # as mapping.to_neutral
        return PaymentReport(status=status, provider_ref=query.provider_ref, amount=query.amount,
                             currency=query.currency, failure_code=failure_code, saved_method_ref=saved)

    async def cancel_payment(self, query: PaymentQuery, credentials: Credentials) -> None:
        """Close it: the payer page and the pay endpoints refuse it from now on (410 on the page)."""
        if not await self._book.close(query.payment_id):
            raise ProviderDeclined(f"the payer already paid sandbox payment {query.payment_id}",
                                   provider_code="payment_completed")

    async def charge_saved_method(self, request: PaymentRequest, method_ref: str,
                                  credentials: Credentials) -> PaymentReport:
        """A renewal, off-session, on the method the first payment (`method_ref`, its `sbx_`
        reference) saved: settled at once, as the renewal magic values say (mapping.py)."""
        assert request.amount >= 0 and method_ref.startswith("sbx_"), method_ref
        declined = renewal_decline(request.metadata)
        if declined is not None:
            raise ProviderDeclined(f"sandbox declined the saved method ({declined})", provider_code=declined)
        return PaymentReport(status=PaymentStatus.SUCCEEDED, provider_ref=f"sbxch_{new_token()}", amount=request.amount,
                             currency=request.currency)

    async def submit_dispute_evidence(self, evidence: DisputeEvidence, credentials: Credentials) -> DisputeEvidenceResult:
        """The sandbox takes any evidence for an open dispute of its own and puts it under review
        (close it with `POST /v1/sandbox/disputes/{id}/close`)."""
        status = await self._book.record_dispute_evidence(evidence)
        if status is None:
            raise ProviderDeclined(f"the sandbox has no dispute {evidence.provider_dispute_id[:40]}",
                                   provider_code="resource_missing")
        if status in ("won", "lost"):
            raise ProviderDeclined("the sandbox dispute is closed", provider_code="dispute_closed")
        return DisputeEvidenceResult(status=status, submitted=True)

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

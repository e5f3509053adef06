"""The Stripe channel: Checkout Sessions, signed webhooks, refunds, PaymentIntent queries,
refund queries, the closing of an unpaid session (`POST /v1/checkout/sessions/{id}/expire`) and
off-session charges of a saved payment method (subscription renewals).

Saved methods: a subscription's first order (PaymentRequest.save_method) makes its session with
`customer_creation=always` and `payment_intent_data[setup_future_usage]=off_session`, so Stripe
creates a Customer and attaches the payment method to it. The paid payment reports
`saved_method_ref` = `cus_...:pm_...` (or `cus_...:pi_...` from a session webhook, which names no
payment method: the first renewal reads it from the PaymentIntent). A renewal is
`POST /v1/payment_intents` with that customer and method, `off_session=true&confirm=true`,
Idempotency-Key = our payment id. A decline is HTTP 402 `card_error` -> ProviderDeclined with its
decline_code (hard declines are the subscription's to judge); a bank asking for authentication
(402 `authentication_required`, or a PaymentIntent left in `requires_action`) is a definite
failure with provider_code `authentication_required`: the payer is absent, so the subscription
treats it as a soft failure (retries, the fallback channel).

Credentials (API.md "Channel settings"): `secret_key` (sk_...), `webhook_secret` (whsec_...),
`api_base` (default https://api.stripe.com). Requests are form-encoded with Stripe's nested
bracket keys, authenticated with `Authorization: Bearer <secret_key>`, and every POST carries an
`Idempotency-Key` (our payment or refund id) so that a retry after a timeout finds the first
result instead of creating a second session or refund. No `Stripe-Version` is sent: the
account's default version applies, and the mapping accepts both session shapes (with or without
a PaymentIntent at creation).

A session is created to expire with the order's reservation (`expires_at`, moved into Stripe's
30 min .. 24 h window, mapping.session_expires_at_s).

Errors: the provider not reached at all (connect error or timeout, pool timeout) ->
ChannelUnreachable; sent but no complete answer (read/write timeout, dropped connection) ->
ChannelTimeout, because the outcome is unknown; HTTP 5xx, 409 (a request with this key still
running) and 429 (rate limit) -> ChannelUnavailable (unknown); any other HTTP 4xx is a definite
refusal -> ProviderDeclined with Stripe's decline_code/code/type as provider_code, the message
naming type/code/decline_code/param (never Stripe's own message).
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
import msgspec

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Credentials,
    DisputeEvidence,
    DisputeEvidenceResult,
    PaymentCreated,
    PaymentQuery,
    PaymentReport,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
    RefundResult,
    Setting,
    StatementLine,
)
from apss.channels.stripe import mapping
from apss.clock import Clock, SystemClock
from apss.crypto import parse_signature_header, verify_timestamped
from apss.domain.payments import PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    ChannelUnreachable,
    CurrencyNotSupported,
    InvalidRequest,
    ProviderDeclined,
)

__all__ = ["DEFAULT_API_BASE", "SIGNATURE_TOLERANCE_S", "StripeChannel"]

DEFAULT_API_BASE = "https://api.stripe.com"
SIGNATURE_TOLERANCE_S = 300  # stripe.Webhook.DEFAULT_TOLERANCE
_TIMEOUT_S = 10.0
_BODY_BYTES_MAX = 1_000_000  # Stripe events are a few KB; refuse to parse anything huge
# 4xx answers that do not mean "refused": the same key still running (409), the rate limit (429).
_RETRYABLE_4XX = frozenset({409, 429})

_T = TypeVar("_T")


class StripeChannel:
    name = "stripe"
    test_only = False
    settings = {
        "secret_key": Setting(secret=True), "webhook_secret": Setting(secret=True),
        "api_base": Setting(secret=False, required=False),
    }

    def __init__(self, *, public_url: str, http: httpx.AsyncClient | None = None, clock: Clock | None = None) -> None:
        assert public_url, "the public url is the fallback success/cancel url"
        self._public_url = public_url
        self._clock = clock if clock is not None else SystemClock()
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=_TIMEOUT_S)

    def __repr__(self) -> str:  # credentials are per call and never stored; say so anyway
        return f"StripeChannel(public_url={self._public_url!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- payments

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        _check_amount(request.amount, request.currency)
        params = mapping.checkout_session_params(request, return_url=request.return_url or self._public_url,
                                                 now_s=self._clock.now_ms() // 1000)
        body = await self._send(
            "POST", "/v1/checkout/sessions", credentials, form=params, idempotency_key=request.payment_id
        )
        session = _decode(body, mapping.CheckoutSession)
        try:
            created = mapping.payment_created(session, amount=request.amount, currency=request.currency)
        except ValueError as exc:
            raise ChannelUnavailable(f"stripe checkout session {session.id}: {exc}") from None
        assert created.provider_ref.startswith(("pi_", "cs_")), created.provider_ref
        return created

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        ref = query.provider_ref
        if ref is None:
            return await self._search_payment(query, credentials)
        if ref.startswith("cs_"):
            path = f"/v1/checkout/sessions/{_path_id(ref)}"
            body = await self._send("GET", path, credentials, query=[("expand[0]", "payment_intent")])
            report = _convert(mapping.session_report, _decode(body, mapping.CheckoutSession))
        else:
            body = await self._send("GET", f"/v1/payment_intents/{_path_id(ref)}", credentials)
            report = _convert(mapping.payment_intent_report, _decode(body, mapping.PaymentIntent))
        assert report.provider_ref is not None
        return report

    async def _search_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        """No provider_ref (the create call timed out): look the PaymentIntent up by our id.
        Stripe Search lags writes by up to a minute, so "not found" stays `unknown`."""
        params = [("query", mapping.search_query(query.payment_id)), ("limit", "1")]
        body = await self._send("GET", "/v1/payment_intents/search", credentials, query=params)
        found = _decode(body, mapping.PaymentIntentSearch).data
        if not found:
            return PaymentReport(status=PaymentStatus.UNKNOWN)
        return _convert(mapping.payment_intent_report, found[0])

    async def cancel_payment(self, query: PaymentQuery, credentials: Credentials) -> None:
        """Expire the open Checkout Session. Stripe expires only an `open` one; when it refuses,
        the session is read back: already expired is done, complete means the payer paid
        (ProviderDeclined `checkout_session_complete`: the payment is the late-payment policy's)."""
        session_id = await self._session_of(query, credentials)
        path = f"/v1/checkout/sessions/{_path_id(session_id)}"
        try:
            await self._send("POST", f"{path}/expire", credentials, form={}, idempotency_key=f"expire_{query.payment_id}")
            return
        except ProviderDeclined:
            session = _decode(await self._send("GET", path, credentials), mapping.CheckoutSession)
        try:
            if mapping.closed_session(session):
                return
        except ValueError:
            raise ProviderDeclined(f"stripe checkout session {session.id} is complete: it was paid",
                                   provider_code="checkout_session_complete") from None
        raise ChannelUnavailable(f"stripe refused to expire checkout session {session.id}, which is still open")

    async def _session_of(self, query: PaymentQuery, credentials: Credentials) -> str:
        """The Checkout Session of the payment: its ref, or the session that made its PaymentIntent."""
        ref = query.provider_ref
        if ref is None:
            raise ChannelUnavailable(f"stripe payment {query.payment_id} has no known session yet")
        if ref.startswith("cs_"):
            return ref
        params = [("payment_intent", _path_id(ref)), ("limit", "1")]
        found = _decode(await self._send("GET", "/v1/checkout/sessions", credentials, query=params), mapping.SessionList).data
        if not found:
            raise ChannelUnavailable(f"stripe lists no checkout session for {ref}")
        return found[0].id

    async def charge_saved_method(self, request: PaymentRequest, method_ref: str,
                                  credentials: Credentials) -> PaymentReport:
        """A renewal on the saved method (module docstring); succeeded, processing (the janitor
        asks later) or a definite refusal."""
        _check_amount(request.amount, request.currency)
        try:
            customer, method = mapping.split_saved_method_ref(method_ref)
        except ValueError as exc:
            raise InvalidRequest(f"stripe payment {request.payment_id}: {exc}", code="saved_method_missing") from None
        if method.startswith("pi_"):
            body = await self._send("GET", f"/v1/payment_intents/{_path_id(method)}", credentials)
            found = _decode(body, mapping.PaymentIntent).payment_method
            if found is None:
                raise ProviderDeclined(f"stripe payment intent {method} has no payment method", provider_code="no_payment_method")
            method = found
        params = mapping.off_session_params(request, customer=_path_id(customer), payment_method=_path_id(method))
        body = await self._send("POST", "/v1/payment_intents", credentials, form=params, idempotency_key=request.payment_id)
        intent = _decode(body, mapping.PaymentIntent)
        report = _convert(mapping.payment_intent_report, intent)
        if (report.amount, report.currency) != (request.amount, request.currency):
            raise ChannelUnavailable(f"stripe payment intent {intent.id} differs in amount or currency from ours")
        if intent.status == "requires_action":  # off-session, nobody can authenticate it now
            raise ProviderDeclined(f"stripe payment intent {intent.id} requires authentication",
                                   provider_code="authentication_required")
        assert report.provider_ref == intent.id
        return report

    # --- refunds

    async def query_refund(self, query: RefundQuery, credentials: Credentials) -> RefundResult:
        """GET the refund; without its re_ id (the create call timed out), find it among the
        PaymentIntent's refunds by our refund id in its metadata. None there yet: still pending."""
        if query.provider_refund_ref is not None:
            body = await self._send("GET", f"/v1/refunds/{_path_id(query.provider_refund_ref)}", credentials)
            return mapping.refund_result(_decode(body, mapping.Refund))
        intent = await self._payment_intent_of(query.provider_ref, credentials)
        params = [("payment_intent", intent), ("limit", "100")]
        listed = _decode(await self._send("GET", "/v1/refunds", credentials, query=params), mapping.RefundList).data
        for refund in listed:
            if refund.metadata.get(mapping.REFUND_ID_KEY) == query.refund_id:
                return mapping.refund_result(refund)
        return RefundResult(provider_refund_ref=query.refund_id, status="pending")

    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult:
        _check_amount(request.amount, request.currency)
        intent = await self._payment_intent_of(request.provider_ref, credentials)
        params = mapping.refund_params(request, payment_intent=intent)
        body = await self._send("POST", "/v1/refunds", credentials, form=params, idempotency_key=request.refund_id)
        refund = _decode(body, mapping.Refund)
        echoed = _convert(lambda r: mapping.from_stripe_amount(r.amount, r.currency), refund)
        if echoed != (request.amount, request.currency):
            raise ChannelUnavailable(f"stripe refund {refund.id} differs in amount or currency from ours")
        return mapping.refund_result(refund)

    async def _payment_intent_of(self, provider_ref: str, credentials: Credentials) -> str:
        if provider_ref.startswith("pi_"):
            return provider_ref
        assert provider_ref.startswith("cs_"), "stripe provider_refs are pi_ or cs_ ids"
        body = await self._send("GET", f"/v1/checkout/sessions/{_path_id(provider_ref)}", credentials)
        intent = _decode(body, mapping.CheckoutSession).payment_intent
        if not isinstance(intent, str):
            raise ChannelUnavailable(f"stripe checkout session {provider_ref} has no payment to refund")
        return intent

    # --- disputes

    async def submit_dispute_evidence(self, evidence: DisputeEvidence, credentials: Credentials) -> DisputeEvidenceResult:
        """`POST /v1/disputes/{id}` with `evidence[...]` and `submit=true` (no later changes);
        Idempotency-Key `<our dispute id>:evidence`, so a retry after a timeout submits nothing twice."""
        form = {"evidence": dict(evidence.fields), "submit": True, "metadata": {"apss_dispute_id": evidence.dispute_id}}
        body = await self._send("POST", f"/v1/disputes/{_path_id(evidence.provider_dispute_id)}", credentials, form=form,
                                idempotency_key=f"{evidence.dispute_id}:evidence")
        dispute = _decode(body, mapping.Dispute)
        if dispute.id != evidence.provider_dispute_id:
            raise ChannelUnavailable(f"stripe answered for dispute {dispute.id[:40]}, not ours")
        return DisputeEvidenceResult(status=mapping.dispute_status(dispute.status), submitted=True)

    # --- callbacks

    async def verify_callback(self, request: CallbackRequest, credentials: Credentials) -> list[CallbackEvent]:
        self._verify_signature(request, credentials)
        if len(request.body) > _BODY_BYTES_MAX:
            raise CallbackRejected("stripe event body is too large")
        try:
            event = msgspec.json.decode(request.body, type=mapping.Event)
            if event.object != "event":
                raise ValueError(f"object is {event.object!r}, not 'event'")
            return mapping.events_from(event)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise CallbackRejected(f"stripe event has an unexpected shape: {exc}") from None

    def _verify_signature(self, request: CallbackRequest, credentials: Credentials) -> None:
        """Stripe-Signature `t=..,v1=..[,v1=..]`: HMAC-SHA256 over `t.rawbody` keyed with the
        whole whsec_ secret; v0 and other schemes are ignored (no downgrade)."""
        secret = credentials.get("webhook_secret", "")
        if not secret:
            raise CallbackRejected("the stripe webhook secret is not configured")
        header = request.headers.get("stripe-signature", "")
        parsed = parse_signature_header(header)
        if parsed is None:
            raise CallbackRejected("stripe-signature header has no t= and v1= parts")
        ok = verify_timestamped(
            secrets_allowed=[secret], header=header, body=request.body,
            now_s=request.now_s, tolerance_s=SIGNATURE_TOLERANCE_S,
        )
        if not ok:
            if abs(request.now_s - parsed.timestamp_s) > SIGNATURE_TOLERANCE_S:
                raise CallbackRejected("stripe-signature timestamp is outside the 300 s tolerance")
            raise CallbackRejected("stripe-signature does not match the body")

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        # Stripe wants any 2xx; anything else makes it retry with backoff for up to 3 days.
        return CallbackReply(status_code=200 if accepted else 400)

    def parse_statement(self, data: bytes) -> list[StatementLine]:
        try:
            return mapping.statement_lines(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"stripe statement: {exc}", param="statement") from None

    # --- HTTP

    async def _send(
        self,
        method: str,
        path: str,
        credentials: Credentials,
        *,
        form: dict[str, Any] | None = None,
        query: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> bytes:
        assert (form is not None) == (method == "POST"), "Stripe POSTs are form-encoded"
        secret = credentials.get("secret_key", "")
        if not secret:
            raise ChannelUnavailable("the stripe secret_key is not configured")
        headers = {"Authorization": f"Bearer {secret}"}
        content = None
        if form is not None:
            assert idempotency_key, "every Stripe POST carries an idempotency key"
            headers["Idempotency-Key"] = idempotency_key
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            content = mapping.form_encode(form).encode()
        url = credentials.get("api_base", DEFAULT_API_BASE).rstrip("/") + path
        response = await self._request(method, url, headers=headers, content=content, query=query)
        if response.status_code >= 500:
            raise ChannelUnavailable(f"stripe answered HTTP {response.status_code} to {method} {path}")
        if response.status_code >= 400:
            summary = mapping.error_summary(response.content)
            message = f"stripe refused {method} {path} (HTTP {response.status_code}): {summary}"
            if response.status_code in _RETRYABLE_4XX:
                raise ChannelUnavailable(message)
            raise ProviderDeclined(message, provider_code=mapping.error_code(response.content))
        return response.content

    async def _request(
        self, method: str, url: str, *, headers: dict[str, str], content: bytes | None,
        query: list[tuple[str, str]] | None,
    ) -> httpx.Response:
        try:
            return await self._http.request(method, url, headers=headers, content=content, params=query)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached Stripe: safe to report as unavailable.
            raise ChannelUnreachable(f"stripe could not be reached ({type(exc).__name__})") from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            # The request may have been applied: the outcome is unknown.
            raise ChannelTimeout(f"stripe did not answer ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ChannelUnavailable(f"stripe request failed ({type(exc).__name__})") from None


def _check_amount(amount: int, currency: str) -> None:
    """Refuse, before any call, what Stripe cannot take (see mapping's docstring)."""
    if not mapping.stripe_takes_currency(currency):
        raise CurrencyNotSupported(f"the stripe channel does not take {currency}", param="currency")
    try:
        mapping.to_stripe_amount(amount, currency)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="amount") from None


def _decode(body: bytes, type_: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChannelUnavailable(f"stripe answered with an unexpected shape: {exc}") from None


def _convert(function: Any, value: Any) -> Any:
    try:
        return function(value)
    except ValueError as exc:
        raise ChannelUnavailable(f"stripe answer cannot be converted: {exc}") from None


def _path_id(ref: str) -> str:
    # Stripe ids are [A-Za-z0-9_]; anything else would change the path, not just the id.
    if not ref.replace("_", "").isalnum() or not ref.isascii():
        raise ChannelUnavailable(f"not a stripe id: {ref[:40]!r}")
    return ref

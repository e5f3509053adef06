"""The PayPal channel: Orders v2 checkout, Payments v2 refunds, self-verified webhooks.

Flow: create_payment makes an order (intent CAPTURE) and sends the payer to its `payer-action`
link; after approval PayPal sends CHECKOUT.ORDER.APPROVED and nothing has moved yet: somebody
must capture. verify_callback stays side-effect free: it returns a `payment.approved` event, and
the services call `capture_payment` outside any transaction and apply its report. The capture
also produces PAYMENT.CAPTURE.COMPLETED (payment.succeeded; stale by then, applied once).

Orders v2 has no expiry field and no void for an order the payer has not approved: an order
lapses on PayPal's own schedule (about 3 hours unapproved), so this channel has no
`cancel_payment`; the closer records `provider_flow_not_supported`, and a payment approved after
its order ended meets the late-payment policy. Refunds are queried with
`GET /v2/payments/refunds/{id}` (or, without the id, among the order's refunds by invoice_id).

Errors: not reached (connect error or connect timeout) -> ChannelUnreachable; no answer in time
-> ChannelTimeout; a 4xx -> ProviderDeclined (provider_code = the first issue, else the error
name), except 429 (rate limit) and 409 (a request with this PayPal-Request-Id still running);
5xx -> ChannelUnavailable.

Webhooks are verified offline (PayPal's "self-verification"): the message
`<transmission_id>|<transmission_time>|<webhook_id>|<crc32(raw body), unsigned decimal>` is
checked with RSASSA-PKCS1-v1_5/SHA-256 against the certificate at PAYPAL-CERT-URL, fetched by
an injectable `cert_fetcher`. PayPal documents no freshness window for PAYPAL-TRANSMISSION-TIME;
APSS adds one (300 s either way, like Stripe's tolerance) so a captured webhook cannot be
replayed later. PayPal retries unacknowledged webhooks for 3 days, each retry signed anew.
"""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Credentials,
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
from apss.channels.paypal import mapping
from apss.channels.tokens import AccessTokens
from apss.clock import parse_rfc3339
from apss.domain.payments import PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    ChannelUnreachable,
    Conflict,
    CurrencyNotSupported,
    ProviderDeclined,
)

__all__ = ["CertFetcher", "PayPalCertFetcher", "PayPalChannel", "check_cert_url", "check_paypal_cert", "signed_message"]

API_BASE_DEFAULT = "https://api-m.paypal.com"
AUTH_ALGO = "SHA256withRSA"
TRANSMISSION_TOLERANCE_S = 300
_HTTP_TIMEOUT_S = 10.0
_TOKEN_MARGIN_S = 120  # refresh this long before PayPal's expires_in runs out
_CERT_CACHE_MAX = 16
# A certificate URL is fetched at most once per this long, whatever the answer: a flood of forged
# callbacks naming one URL costs one download, and a failure is remembered as long as a success.
_CERT_FETCH_PERIOD_S = 3600.0
# The hosts PayPal documents for PAYPAL-CERT-URL (live and sandbox), and the certificates' path.
_CERT_HOSTS = frozenset({"api.paypal.com", "api-m.paypal.com", "api.sandbox.paypal.com", "api-m.sandbox.paypal.com"})
_CERT_PATH_PREFIX = "/v1/notifications/certs/"
_CERT_BYTES_MAX = 64 * 1024
# Capture refusals that mean "this instrument was declined", not "PayPal could not be asked".
_CAPTURE_DECLINES = frozenset({"INSTRUMENT_DECLINED", "TRANSACTION_REFUSED", "PAYER_CANNOT_PAY"})
_WEBHOOK_HEADERS = ("paypal-transmission-id", "paypal-transmission-time", "paypal-transmission-sig", "paypal-cert-url", "paypal-auth-algo")

_order_decoder = msgspec.json.Decoder(mapping.Order)
_refund_decoder = msgspec.json.Decoder(mapping.Refund)
_envelope_decoder = msgspec.json.Decoder(mapping.WebhookEnvelope)

# Given PAYPAL-CERT-URL, return the certificate whose key signs the webhook; raises
# CallbackRejected when the URL or certificate is not trustworthy.
CertFetcher = Callable[[str], Awaitable[x509.Certificate]]


def signed_message(*, transmission_id: str, transmission_time: str, webhook_id: str, body: bytes) -> bytes:
    """What PayPal signs: the CRC32 of the raw body as an unsigned decimal, never re-serialized JSON."""
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return f"{transmission_id}|{transmission_time}|{webhook_id}|{crc}".encode()


def check_cert_url(url: str) -> None:
    """Only https URLs on PayPal's documented API hosts, under its certificates path, may name the
    signing certificate (nothing else is ever fetched for a callback)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or host not in _CERT_HOSTS or parts.username or parts.password:
        raise CallbackRejected("PAYPAL-CERT-URL is not an https URL on PayPal's API host")
    if parts.port not in (None, 443):
        raise CallbackRejected("PAYPAL-CERT-URL names an unexpected port")
    if not parts.path.startswith(_CERT_PATH_PREFIX) or parts.query or parts.fragment or ".." in parts.path:
        raise CallbackRejected("PAYPAL-CERT-URL is not a PayPal webhook certificate path")


def check_paypal_cert(cert: x509.Certificate, *, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CallbackRejected("the PayPal webhook certificate is not currently valid")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value).lower() if names else ""
    if not common_name.endswith(".paypal.com"):
        raise CallbackRejected("the PayPal webhook certificate is not issued to a paypal.com name")


class PayPalCertFetcher:
    """The production fetcher: GET over TLS (httpx verifies the server certificate, so the PEM
    really comes from a paypal.com host), then validity and CN checks, cached by URL.

    Not done: verifying the PEM's own chain against DigiCert roots as the legacy SDK did; trust
    rests on the TLS-authenticated download from a *.paypal.com host instead.
    """

    def __init__(self, http: httpx.AsyncClient, *, now_s: Callable[[], float] = time.monotonic,
                 period_s: float = _CERT_FETCH_PERIOD_S) -> None:
        assert period_s > 0
        self._http = http
        self._now_s = now_s
        self._period_s = period_s
        # url -> (fetched at, the certificate or the error the fetch ended with)
        self._cache: dict[str, tuple[float, x509.Certificate | Exception]] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # one fetch per URL at a time
        self.fetches = 0  # observability: downloads started

    async def __call__(self, url: str) -> x509.Certificate:
        check_cert_url(url)  # before any lookup: a URL off PayPal's host is never fetched or cached
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            cached = self._cache.get(url)
            if cached is None or self._now_s() - cached[0] >= self._period_s:
                cached = (self._now_s(), await self._fetch(url))
                if url not in self._cache and len(self._cache) >= _CERT_CACHE_MAX:
                    oldest = next(iter(self._cache))
                    self._cache.pop(oldest)
                    self._locks.pop(oldest, None)
                self._cache[url] = cached
        outcome = cached[1]
        if isinstance(outcome, Exception):
            raise type(outcome)(*outcome.args)  # a fresh exception each time: no shared traceback
        # Re-checked on every use: a cached certificate can expire.
        check_paypal_cert(outcome, now=datetime.now(UTC))
        return outcome

    async def _fetch(self, url: str) -> x509.Certificate | Exception:
        self.fetches += 1
        try:
            return await self._download(url)
        except (ChannelUnavailable, CallbackRejected) as exc:
            return exc

    async def _download(self, url: str) -> x509.Certificate:
        try:
            response = await self._http.get(url, timeout=_HTTP_TIMEOUT_S, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"could not fetch the PayPal webhook certificate: {type(exc).__name__}") from exc
        if response.status_code != 200 or len(response.content) > _CERT_BYTES_MAX:
            raise ChannelUnavailable(f"PayPal webhook certificate fetch answered HTTP {response.status_code}")
        try:
            # The file may hold the chain too; the signing certificate comes first.
            return x509.load_pem_x509_certificates(response.content)[0]
        except ValueError as exc:
            raise CallbackRejected("PAYPAL-CERT-URL did not serve a PEM certificate") from exc


class PayPalChannel:
    name = "paypal"
    test_only = False
    settings = {
        "client_id": Setting(secret=False), "client_secret": Setting(secret=True),
        "webhook_id": Setting(secret=False), "api_base": Setting(secret=False, required=False),
    }

    def __init__(
        self,
        *,
        public_url: str,
        http: httpx.AsyncClient | None = None,
        cert_fetcher: CertFetcher | None = None,
    ) -> None:
        self._public_url = public_url.rstrip("/")
        self._http = http if http is not None else httpx.AsyncClient(timeout=_HTTP_TIMEOUT_S)
        self._cert_fetcher = cert_fetcher if cert_fetcher is not None else PayPalCertFetcher(self._http)
        self._tokens = AccessTokens(now_s=time.monotonic, margin_s=_TOKEN_MARGIN_S)  # by (api_base, client_id)

    def __repr__(self) -> str:
        return f"PayPalChannel(public_url={self._public_url!r})"

    # --- payments ---

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        if request.currency not in mapping.PAYPAL_CURRENCIES:
            raise CurrencyNotSupported(f"PayPal does not take {request.currency}", param="currency")
        assert request.amount > 0, request.amount
        # APSS has no separate cancel page: the payer lands on the same return page either way.
        return_url = request.return_url or self._public_url
        body = mapping.order_body(request, return_url=return_url, cancel_url=return_url)
        response = await self._call(
            "POST", "/v2/checkout/orders", credentials, body=body, request_id=request.payment_id, operation="create order"
        )
        created = mapping.created_from_order(self._decode(_order_decoder, response))
        assert created.provider_ref, "PayPal answered an order without an id"
        return created

    async def capture_order(self, order_id: str, credentials: Credentials, *, request_id: str | None = None) -> PaymentReport:
        """Capture an APPROVED order (after CHECKOUT.ORDER.APPROVED or the payer's return).

        Idempotent: the PayPal-Request-Id defaults to one derived from the order id (PayPal keeps
        it for 6 hours), and an order that is already captured is reported as it stands. After a
        decline the payer may approve again with another instrument; capture that attempt with a
        new `request_id`, or PayPal may replay the first answer.
        """
        assert order_id
        path = f"/v2/checkout/orders/{quote(order_id, safe='')}/capture"
        try:
            response = await self._call(
                "POST", path, credentials, body={}, request_id=request_id or f"capture-{order_id}",
                operation="capture order", prefer_representation=True,
            )
        except _PayPalRefused as exc:
            if exc.issue == "ORDER_ALREADY_CAPTURED":
                return await self._get_order_report(order_id, credentials)
            if exc.issue in _CAPTURE_DECLINES:
                return PaymentReport(status=PaymentStatus.FAILED, provider_ref=order_id, failure_code=exc.issue)
            raise
        return mapping.report_from_order(self._decode(_order_decoder, response))

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        """GET the order. Without a provider_ref (creation timed out) there is nothing to look up:
        Orders v2 has no search by custom_id, so the answer is `unknown`."""
        if not query.provider_ref:
            return PaymentReport(status=PaymentStatus.UNKNOWN)
        return await self._get_order_report(query.provider_ref, credentials)

    async def _get_order_report(self, order_id: str, credentials: Credentials) -> PaymentReport:
        return mapping.report_from_order(await self._get_order(order_id, credentials))

    async def _get_order(self, order_id: str, credentials: Credentials) -> mapping.Order:
        path = f"/v2/checkout/orders/{quote(order_id, safe='')}"
        response = await self._call("GET", path, credentials, operation="get order")
        return self._decode(_order_decoder, response)

    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult:
        """provider_ref is the order id, but refunds go to the capture: GET the order first."""
        order = await self._get_order(request.provider_ref, credentials)
        capture_id = mapping.capture_id_of(order)
        if capture_id is None:
            raise Conflict(f"PayPal order {order.id} has no capture to refund", code="payment_not_captured")
        body = mapping.refund_body(request)
        path = f"/v2/payments/captures/{quote(capture_id, safe='')}/refund"
        response = await self._call(
            "POST", path, credentials, body=body, request_id=request.refund_id, operation="refund capture",
            prefer_representation=True,
        )
        refund = self._decode(_refund_decoder, response)
        status, failure = mapping.refund_outcome(refund)
        return RefundResult(provider_refund_ref=refund.id, status=status, failure_code=failure)

    async def query_refund(self, query: RefundQuery, credentials: Credentials) -> RefundResult:
        if query.provider_refund_ref:
            path = f"/v2/payments/refunds/{quote(query.provider_refund_ref, safe='')}"
            refund = self._decode(_refund_decoder, await self._call("GET", path, credentials, operation="get refund"))
        else:  # the refund call timed out: look for ours (invoice_id) among the order's refunds
            order = await self._get_order(query.provider_ref, credentials)
            found = [r for unit in order.purchase_units if unit.payments for r in unit.payments.refunds
                     if r.invoice_id == query.refund_id]
            if not found:
                return RefundResult(provider_refund_ref=query.refund_id, status="pending")
            refund = found[0]
        status, failure = mapping.refund_outcome(refund)
        return RefundResult(provider_refund_ref=refund.id, status=status, failure_code=failure)

    def parse_statement(self, data: bytes) -> list[StatementLine]:
        return mapping.parse_statement(data)

    # --- webhooks ---

    async def verify_callback(self, request: CallbackRequest, credentials: Credentials) -> list[CallbackEvent]:
        envelope = await self._verified_envelope(request, credentials)
        try:
            return mapping.events_from_webhook(envelope)
        except (ValueError, msgspec.ValidationError, CurrencyNotSupported) as exc:
            raise CallbackRejected(f"PayPal webhook {envelope.event_type} has an unexpected shape: {exc}") from exc

    async def capture_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        """The Protocol's capture: the approved PayPal order is `provider_ref`."""
        if not query.provider_ref:
            return PaymentReport(status=PaymentStatus.UNKNOWN)
        return await self.capture_order(query.provider_ref, credentials)

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        # Any 2xx acknowledges; anything else makes PayPal retry (up to 25 times over 3 days).
        return CallbackReply(status_code=200) if accepted else CallbackReply(status_code=400)

    async def _verified_envelope(self, request: CallbackRequest, credentials: Credentials) -> mapping.WebhookEnvelope:
        await self._verify_signature(request, credentials)
        try:
            return _envelope_decoder.decode(request.body)
        except msgspec.DecodeError as exc:
            raise CallbackRejected("PayPal webhook body is not an event envelope") from exc

    async def _verify_signature(self, request: CallbackRequest, credentials: Credentials) -> None:
        """Headers, algorithm, freshness, then the RSA signature; nothing of the body is parsed."""
        headers = {name: request.headers.get(name, "").strip() for name in _WEBHOOK_HEADERS}
        missing = [name for name, value in headers.items() if not value]
        if missing:
            raise CallbackRejected(f"PayPal webhook lacks {', '.join(missing)}")
        if headers["paypal-auth-algo"] != AUTH_ALGO:
            raise CallbackRejected(f"PayPal webhook algorithm must be {AUTH_ALGO}")
        try:
            sent_s = parse_rfc3339(headers["paypal-transmission-time"]) // 1000
            signature = base64.b64decode(headers["paypal-transmission-sig"], validate=True)
        except ValueError as exc:
            raise CallbackRejected("PayPal webhook transmission time or signature is malformed") from exc
        if abs(request.now_s - sent_s) > TRANSMISSION_TOLERANCE_S:
            raise CallbackRejected("PayPal webhook transmission time is outside the tolerance")
        webhook_id = credentials.get("webhook_id", "")
        if not webhook_id:
            raise CallbackRejected("PayPal webhook_id is not configured: no webhook can be verified")
        message = signed_message(
            transmission_id=headers["paypal-transmission-id"], transmission_time=headers["paypal-transmission-time"],
            webhook_id=webhook_id, body=request.body,
        )
        cert = await self._cert_fetcher(headers["paypal-cert-url"])
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise CallbackRejected("the PayPal webhook certificate does not hold an RSA key")
        try:
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise CallbackRejected("PayPal webhook signature does not match") from exc

    # --- HTTP ---

    async def _call(
        self,
        method: str,
        path: str,
        credentials: Credentials,
        *,
        operation: str,
        body: dict[str, Any] | None = None,
        request_id: str | None = None,
        prefer_representation: bool = False,
    ) -> httpx.Response:
        token = await self._token(credentials)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if request_id is not None:
            headers["PayPal-Request-Id"] = request_id  # PayPal replays the first answer for a retry
        if prefer_representation:
            headers["Prefer"] = "return=representation"
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = msgspec.json.encode(body)
        response = await self._send(method, _api_base(credentials) + path, headers=headers, content=content, operation=operation)
        if response.status_code == 401:
            # A revoked or rotated token: forget it so the next call fetches a new one.
            self._tokens.forget((_api_base(credentials), credentials.get("client_id", "")))
        _raise_for_status(response, operation)
        return response

    async def _token(self, credentials: Credentials) -> str:
        client_id, secret = credentials.get("client_id", ""), credentials.get("client_secret", "")
        if not client_id or not secret:
            raise ChannelUnavailable("PayPal credentials lack client_id or client_secret")
        key = (_api_base(credentials), client_id)
        cached = self._tokens.get(key)
        if cached is not None:
            return cached
        response = await self._send(
            "POST", key[0] + "/v1/oauth2/token", operation="get access token",
            headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"},
            content=b"grant_type=client_credentials", auth=(client_id, secret),
        )
        _raise_for_status(response, "get access token")
        try:
            grant = msgspec.json.decode(response.content, type=_TokenGrant)
        except msgspec.DecodeError as exc:
            raise ChannelUnavailable("PayPal answered the token request with an unexpected body") from exc
        self._tokens.put(key, grant.access_token, expires_in_s=grant.expires_in)
        return grant.access_token

    async def _send(self, method: str, url: str, *, operation: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ChannelUnreachable(f"PayPal could not be reached for {operation}: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            # The request may have reached PayPal: the outcome is unknown, not failed.
            raise ChannelTimeout(f"PayPal did not answer {operation} in time") from exc
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"PayPal could not be reached for {operation}: {type(exc).__name__}") from exc

    @staticmethod
    def _decode(decoder: msgspec.json.Decoder[Any], response: httpx.Response) -> Any:
        try:
            return decoder.decode(response.content)
        except (msgspec.DecodeError, ValueError) as exc:
            raise ChannelUnavailable(f"PayPal answered with an unexpected body: {exc}") from exc


class _PayPalRefused(ProviderDeclined):
    """A 4xx from PayPal, a definite refusal; `issue` (details[0].issue) lets callers recognise
    benign refusals."""

    def __init__(self, message: str, *, issue: str | None, name: str | None) -> None:
        super().__init__(message, provider_code=issue or name)
        self.issue = issue


class _TokenGrant(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    expires_in: int


class _ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    issue: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None = None
    debug_id: str | None = None
    details: list[_ErrorDetail] = []
    error: str | None = None  # the OAuth endpoint's shape: {"error", "error_description"}


def _api_base(credentials: Credentials) -> str:
    return (credentials.get("api_base") or API_BASE_DEFAULT).rstrip("/")


def _raise_for_status(response: httpx.Response, operation: str) -> None:
    """2xx passes; a 4xx is a refusal naming PayPal's error name and issue; 5xx, 409 and 429 are
    ChannelUnavailable (the outcome is unknown)."""
    if response.is_success:
        return
    if response.status_code >= 500 or response.status_code in (409, 429):
        raise ChannelUnavailable(f"PayPal {operation} failed with HTTP {response.status_code}")
    try:
        error = msgspec.json.decode(response.content, type=_ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        error = _ErrorBody()
    issue = error.details[0].issue if error.details and error.details[0].issue else None
    described = "/".join(part for part in (error.name or error.error, issue) if part) or "no error name"
    debug = f" (debug_id {error.debug_id})" if error.debug_id else ""
    raise _PayPalRefused(f"PayPal {operation} refused with HTTP {response.status_code}: {described}{debug}", issue=issue,
                         name=error.name or error.error)

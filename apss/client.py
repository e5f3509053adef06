"""A typed Python client for a game backend talking to APSS (README "The Python client").

    from apss.client import Client, OrderCreate, OrderLine

    with Client("sk_test_...", base_url="http://127.0.0.1:8000") as apss:
        order = apss.create_order(OrderCreate(player_id="hero", currency="USD",
                                              items=[OrderLine(product_id="prd_...")]))
        print(order.status, order.payment.next_action.url)

Requests and answers are the server's own msgspec Structs (the same classes the server encodes),
so a field the server adds shows up here on the next release and a misspelt one fails before
anything is sent. `AsyncClient` has the same methods, to be awaited.

Retries: a request is sent again, with backoff and jitter, after a connection error, a timeout,
a 5xx, a 429 or a 409 `idempotency_key_in_use`, but only when repeating it is safe: GETs, and POSTs
carrying an Idempotency-Key. Every POST that the server makes idempotent gets one (a fresh UUID
unless the caller passes `idempotency_key=`), kept across its retries, so a create that timed out
after the server did the work answers the stored order instead of making a second one.
`Retry-After` is honoured up to `retry_wait_max_s`.

`verify_webhook` checks a merchant webhook's `APSS-Signature` and returns the event.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import anyio
import httpx
import msgspec

from apss.crypto import verify_timestamped
from apss.domain.payments import ChannelOptions
from apss.services.orders.checkout import OrderCreate, OrderLine
from apss.services.players.game_deliveries import DeliveryList, DeliveryView
from apss.services.players.wallets import WalletDebit
from apss.services.promotions.promotions import CouponEntered
from apss.services.refunds.refunds import RefundCreate, RefundList, RefundView
from apss.services.views import (
    InventoryView,
    OrderEventList,
    OrderList,
    OrderView,
    PaymentDetailView,
    ProductList,
    ProductView,
    SandboxActionView,
    WalletDebitView,
    WalletView,
)

__all__ = [
    "ApssError",
    "AsyncClient",
    "ChannelOptions",
    "Client",
    "CouponEntered",
    "Event",
    "OrderCreate",
    "OrderLine",
    "WebhookSignatureError",
    "verify_webhook",
]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class ApssError(Exception):
    """An error answer: the HTTP status and the error object's fields (README "Errors")."""

    def __init__(self, *, status: int, type: str, code: str, message: str, param: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.request_id = request_id


class WebhookSignatureError(ValueError):
    """The webhook's APSS-Signature does not verify: do not act on the body."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A merchant webhook event; `data["object"]` is the object as the API shows it."""

    id: str
    type: str
    created: int  # unix seconds
    data: dict[str, Any]
    api_version: str


def verify_webhook(*, secret: str | Sequence[str], header: str, body: bytes, tolerance_s: int = 300,
                   now_s: int | None = None) -> Event:
    """The event of a webhook request whose `APSS-Signature` header verifies over the raw `body`
    with `secret` (or any of several, during a secret roll); else WebhookSignatureError. Pass the
    bytes as received, before any JSON parsing. De-duplicate on `event.id`: delivery is at least once."""
    secrets_allowed = [secret] if isinstance(secret, str) else list(secret)
    now = int(time.time()) if now_s is None else now_s
    if not verify_timestamped(secrets_allowed=secrets_allowed, header=header, body=body, now_s=now,
                              tolerance_s=tolerance_s):
        raise WebhookSignatureError("APSS-Signature does not verify (wrong secret, altered body or stale timestamp)")
    try:
        return msgspec.json.decode(body, type=Event)
    except msgspec.ValidationError as exc:
        raise WebhookSignatureError(f"signed body is not an APSS event: {exc}") from None


class _Call(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One API call as data: the sync and async clients only differ in how they send it."""

    method: str
    path: str
    returns: type[T]
    body: bytes | None = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None  # set on every POST the server makes idempotent

    @property
    def retry_safe(self) -> bool:
        return self.method == "GET" or self.idempotency_key is not None

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"} if self.body is not None else {}
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers


def _params(**given: Any) -> dict[str, Any]:
    return {name: value for name, value in given.items() if value is not None}


def _post(path: str, returns: type[T], body: msgspec.Struct | None, idempotency_key: str | None) -> _Call[T]:
    return _Call(method="POST", path=path, returns=returns, body=None if body is None else _encoder.encode(body),
                 idempotency_key=idempotency_key or str(uuid.uuid4()))


class _Endpoints:
    """The API's calls for a game backend. Each builds a _Call and hands it to `_send`."""

    def _send(self, call: _Call) -> Any:
        raise NotImplementedError

    # -- orders -----------------------------------------------------------------------------
    def create_order(self, order: OrderCreate, *, idempotency_key: str | None = None) -> OrderView:
        return self._send(_post("/v1/orders", OrderView, order, idempotency_key))

    def get_order(self, order_id: str) -> OrderView:
        return self._send(_Call(method="GET", path=f"/v1/orders/{order_id}", returns=OrderView))

    def list_orders(self, *, status: str | None = None, player_id: str | None = None, limit: int | None = None,
                    cursor: str | None = None) -> OrderList:
        params = _params(status=status, player_id=player_id, limit=limit, cursor=cursor)
        return self._send(_Call(method="GET", path="/v1/orders", returns=OrderList, params=params))

    def order_events(self, order_id: str, *, limit: int | None = None, cursor: str | None = None) -> OrderEventList:
        return self._send(_Call(method="GET", path=f"/v1/orders/{order_id}/events", returns=OrderEventList,
                                params=_params(limit=limit, cursor=cursor)))

    def cancel_order(self, order_id: str, *, idempotency_key: str | None = None) -> OrderView:
        return self._send(_post(f"/v1/orders/{order_id}/cancel", OrderView, None, idempotency_key))

    def get_payment(self, payment_id: str) -> PaymentDetailView:
        return self._send(_Call(method="GET", path=f"/v1/payments/{payment_id}", returns=PaymentDetailView))

    # -- refunds ----------------------------------------------------------------------------
    def refund(self, order_id: str, *, amount: int | None = None, reason: str | None = None,
               idempotency_key: str | None = None) -> RefundView:
        """Refund `amount` minor units of a paid order (default: all that is left)."""
        return self._send(_post(f"/v1/orders/{order_id}/refunds", RefundView,
                                RefundCreate(amount=amount, reason=reason), idempotency_key))

    def list_refunds(self, order_id: str) -> RefundList:
        return self._send(_Call(method="GET", path=f"/v1/orders/{order_id}/refunds", returns=RefundList))

    def get_refund(self, refund_id: str) -> RefundView:
        return self._send(_Call(method="GET", path=f"/v1/refunds/{refund_id}", returns=RefundView))

    # -- players ----------------------------------------------------------------------------
    def inventory(self, player_id: str) -> InventoryView:
        return self._send(_Call(method="GET", path=f"/v1/players/{player_id}/inventory", returns=InventoryView))

    def wallet(self, player_id: str) -> WalletView:
        return self._send(_Call(method="GET", path=f"/v1/players/{player_id}/wallet", returns=WalletView))

    def debit_wallet(self, player_id: str, *, currency: str, amount: int, reason: str | None = None,
                     idempotency_key: str | None = None) -> WalletDebitView:
        return self._send(_post(f"/v1/players/{player_id}/wallet/debit", WalletDebitView,
                                WalletDebit(currency=currency, amount=amount, reason=reason), idempotency_key))

    # -- deliveries (for game servers that poll instead of receiving webhooks) ---------------
    def list_deliveries(self, *, status: str | None = "pending", limit: int | None = None,
                        cursor: str | None = None) -> DeliveryList:
        return self._send(_Call(method="GET", path="/v1/deliveries", returns=DeliveryList,
                                params=_params(status=status, limit=limit, cursor=cursor)))

    def ack_delivery(self, delivery_id: str, *, idempotency_key: str | None = None) -> DeliveryView:
        return self._send(_post(f"/v1/deliveries/{delivery_id}/ack", DeliveryView, None, idempotency_key))

    # -- catalog ----------------------------------------------------------------------------
    def list_products(self, *, limit: int | None = None, cursor: str | None = None) -> ProductList:
        return self._send(_Call(method="GET", path="/v1/products", returns=ProductList,
                                params=_params(limit=limit, cursor=cursor)))

    def get_product(self, product_id: str) -> ProductView:
        return self._send(_Call(method="GET", path=f"/v1/products/{product_id}", returns=ProductView))

    # -- sandbox (test merchants: play the payer in a game's own tests) ----------------------
    def sandbox_succeed(self, payment_id: str) -> SandboxActionView:
        return self._send(_post(f"/v1/sandbox/payments/{payment_id}/succeed", SandboxActionView, None, None))

    def sandbox_fail(self, payment_id: str) -> SandboxActionView:
        return self._send(_post(f"/v1/sandbox/payments/{payment_id}/fail", SandboxActionView, None, None))


class _Retry:
    """When to send a call again and how long to wait first (shared by both clients)."""

    def __init__(self, *, max_retries: int, wait_base_s: float, wait_max_s: float) -> None:
        assert max_retries >= 0 and 0 < wait_base_s <= wait_max_s
        self.max_retries = max_retries
        self._base = wait_base_s
        self._max = wait_max_s

    def wait_after_error(self, call: _Call, attempt: int) -> float | None:
        """Seconds to wait before another try after a connection error or timeout, or None."""
        return self._backoff(attempt) if call.retry_safe and attempt < self.max_retries else None

    def wait_after_answer(self, call: _Call, attempt: int, response: httpx.Response) -> float | None:
        if not call.retry_safe or attempt >= self.max_retries:
            return None
        if response.status_code == 409:
            in_use = _error_code(response) == "idempotency_key_in_use"  # the first try is still running
            return self._after(response, attempt) if in_use else None
        return self._after(response, attempt) if response.status_code in _RETRYABLE_STATUS else None

    def _after(self, response: httpx.Response, attempt: int) -> float:
        try:
            asked = float(response.headers.get("Retry-After", ""))
        except ValueError:
            return self._backoff(attempt)
        return min(max(asked, 0.0), self._max)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self._max, self._base * 2**attempt))  # full jitter


def _error_code(response: httpx.Response) -> str | None:
    try:
        return msgspec.json.decode(response.content)["error"]["code"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return None


def _result(call: _Call[T], response: httpx.Response) -> T:
    if response.status_code < 300:
        return msgspec.json.decode(response.content, type=call.returns)
    try:
        error = msgspec.json.decode(response.content)["error"]
        fields = {name: error.get(name) for name in ("type", "code", "message", "param")}
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        fields = {"type": "api_error", "code": "unexpected_response",
                  "message": f"HTTP {response.status_code} without an APSS error body", "param": None}
    raise ApssError(status=response.status_code, request_id=response.headers.get("Request-Id"), **fields)


def _client_options(api_key: str, base_url: str, timeout_s: float) -> dict[str, Any]:
    return {"base_url": base_url.rstrip("/"), "timeout": timeout_s,
            "headers": {"Authorization": f"Bearer {api_key}", "User-Agent": "apss-python-client"}}


class Client(_Endpoints):
    """Blocking client; use as a context manager or call close()."""

    def __init__(self, api_key: str, *, base_url: str = "http://127.0.0.1:8000", timeout_s: float = 30.0,
                 max_retries: int = 3, retry_wait_base_s: float = 0.25, retry_wait_max_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(transport=transport, **_client_options(api_key, base_url, timeout_s))
        self._retry = _Retry(max_retries=max_retries, wait_base_s=retry_wait_base_s, wait_max_s=retry_wait_max_s)

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, content=call.body, params=call.params,
                                              headers=call.headers())
            except httpx.TransportError:
                wait = self._retry.wait_after_error(call, attempt)
                if wait is None:
                    raise
            else:
                wait = self._retry.wait_after_answer(call, attempt, response)
                if wait is None:
                    return _result(call, response)
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_Endpoints):
    """The same methods as Client, each to be awaited; use `async with` or await aclose()."""

    def __init__(self, api_key: str, *, base_url: str = "http://127.0.0.1:8000", timeout_s: float = 30.0,
                 max_retries: int = 3, retry_wait_base_s: float = 0.25, retry_wait_max_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(transport=transport, **_client_options(api_key, base_url, timeout_s))
        self._retry = _Retry(max_retries=max_retries, wait_base_s=retry_wait_base_s, wait_max_s=retry_wait_max_s)

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, content=call.body, params=call.params,
                                                    headers=call.headers())
            except httpx.TransportError:
                wait = self._retry.wait_after_error(call, attempt)
                if wait is None:
                    raise
            else:
                wait = self._retry.wait_after_answer(call, attempt, response)
                if wait is None:
                    return _result(call, response)
            await anyio.sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

"""Orders: create (reserve stock, create the payment), read, list, cancel, events.

`POST /v1/orders` is the hot route (a game server's every sale, a flash sale's every buyer). A
well-formed request to it is served by `OrderFastPath`, in front of Litestar's router: the same
checks and the same service call, without the framework's per-request objects (routing, the
handler's signature, dependencies, guards, the response object). Anything it does not accept at
once (no or a wrong key, a publishable key, a body that is empty, too large, not JSON or not an
order) goes on to Litestar with the body it read, so every refusal is Litestar's own answer.
The controller's `create` stays the route of record (OpenAPI, and any request the fast path
passes on), and both call `create_order`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from apss.api import audit
from apss.api.common import (
    NOT_JSON,
    Cursor,
    Limit,
    Services,
    bearer_of,
    decode_strict,
    idempotency_of,
    idempotency_request,
    list_response,
    outcome_response,
    remember_merchant,
)
from apss.api.errors import bug_answer, error_answer
from apss.domain.orders import OrderStatus
from apss.errors import ApssError
from apss.services.idempotency import Outcome
from apss.services.merchants.keys import PUBLISHABLE_PREFIX, Merchant
from apss.services.orders.checkout import OrderCreate
from apss.services.views import OrderEventList, OrderList, OrderView

__all__ = ["OrderController", "OrderFastPath", "create_order"]


class OrderController(Controller):
    path = "/v1/orders"
    tags = ["orders"]
    security = [{"bearer": []}]

    @post("/", summary="Create an order: prices it, reserves stock, creates its payment", idempotent=True)
    async def create(self, data: OrderCreate, request: Request, merchant: Merchant, svc: Services) -> Response[OrderView]:
        return outcome_response(await create_order(svc, request.scope, merchant, data,
                                                   idempotency_key=request.headers.get("idempotency-key")))

    @get("/", summary="List orders, newest first")
    async def list_orders(
        self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
        status: OrderStatus | None = None,
        player_id: Annotated[str | None, Parameter(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")] = None,
    ) -> Response[OrderList]:
        items, has_more = await svc.orders.list(merchant_id=merchant.id, after_id=cursor, limit=limit,
                                                  status=status.value if status else None,
                                                  player_id=svc.privacy.resolve(merchant.id, player_id) if player_id else None)
        return list_response(items, has_more)

    @get("/{order_id:str}", summary="Retrieve an order")
    async def retrieve(self, order_id: str, merchant: Merchant, svc: Services) -> OrderView:
        return await svc.orders.get(merchant_id=merchant.id, order_id=order_id)

    @post("/{order_id:str}/cancel", status_code=200, summary="Cancel a pending order; releases its stock", idempotent=True)
    async def cancel(self, order_id: str, request: Request, merchant: Merchant, svc: Services) -> Response[OrderView]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.checkout.cancel(merchant=merchant, order_id=order_id, idem=idem))

    @get("/{order_id:str}/events", summary="The order's state changes with their causes")
    async def events(self, order_id: str, merchant: Merchant, svc: Services) -> Response[OrderEventList]:
        items = await svc.orders.events(merchant_id=merchant.id, order_id=order_id)
        return list_response(items, False)


_PATH = "/v1/orders"
_ACCEPTED = "apss_order_accepted"  # scope state: (merchant, order, Idempotency-Key) of an accepted request


async def create_order(svc: Services, scope: Scope, merchant: Merchant, data: OrderCreate, *,
                       idempotency_key: str | None) -> Outcome:
    """The order route's work, for the controller and the fast path alike."""
    # An erased player's id is stored (and hashed) as the pseudonym its records carry.
    data = msgspec.structs.replace(data, player_id=svc.privacy.resolve(merchant.id, data.player_id))
    idem = idempotency_of(idempotency_key, method="POST", path=_PATH, body=data)
    return await svc.checkout.create(merchant=merchant, command=data, idem=idem, audit_tx=audit.in_transaction(scope))


class OrderFastPath:
    """ASGI wrapper of Litestar's handler that serves well-formed `POST /v1/orders` itself (above)."""

    def __init__(self, app: ASGIApp, *, svc: Services, body_bytes_max: int) -> None:
        self._app = app
        self._svc = svc
        self._body_bytes_max = body_bytes_max
        self._audited = audit.AuditMiddleware(self._answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != _PATH:
            await self._app(scope, receive, send)
            return
        received, body = await self._read(receive)
        accepted = self._accept(scope, body) if body is not None else None
        if accepted is None:
            await self._app(scope, _replay(received, receive), send)
            return
        merchant, _, _ = accepted
        scope["path_template"] = _PATH  # as Litestar names the route: metrics, audit, logs
        remember_merchant(scope, merchant)
        scope["state"][_ACCEPTED] = accepted
        await self._audited(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route's answer to an accepted request (behind the audit hook, as the router's is)."""
        merchant, data, idempotency_key = scope["state"].pop(_ACCEPTED)
        headers: dict[str, str] | None = None
        try:
            self._svc.rate_limiter.take(merchant.id)
            outcome = await create_order(self._svc, scope, merchant, data, idempotency_key=idempotency_key)
            status, content = outcome.status, outcome.body
            if outcome.replayed:
                headers = {"Idempotent-Replayed": "true"}
        except ApssError as exc:
            status, content, headers = error_answer(exc)
        except Exception:
            status, content = bug_answer("POST", _PATH)
        await _send_json(send, status, content, headers)

    async def _read(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages received and the whole body; None for the body when it is over the size
        limit or the client left (Litestar then answers from the same messages)."""
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return received, None
            size += len(message.get("body", b""))
            if size > self._body_bytes_max:
                return received, None
            if not message.get("more_body", False):
                break
        body = received[0].get("body", b"") if len(received) == 1 else b"".join(m.get("body", b"") for m in received)
        return received, body

    def _accept(self, scope: Scope, body: bytes) -> tuple[Merchant, OrderCreate, str | None] | None:
        """(merchant, order, Idempotency-Key) when the key is a valid secret key and the body an
        order; None for everything Litestar should answer."""
        token = bearer_of(scope["headers"])
        if token is None or token.startswith(PUBLISHABLE_PREFIX) or not body.strip():
            return None
        idempotency_key = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"idempotency-key"), None)
        try:
            merchant = self._svc.merchants.authenticate(token)
            data = decode_strict(body, OrderCreate)
        except Exception:  # refused, or a body the decoder chokes on: the router answers it its way
            return None
        return None if data is NOT_JSON else (merchant, data, idempotency_key)


def _replay(received: list[Message], receive: Receive) -> Receive:
    """A receive that gives the messages already read, then the connection's own."""
    pending = list(received)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _send_json(send: Send, status: int, content: bytes, headers: dict[str, str] | None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode("ascii"))]
    if headers:
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content, "more_body": False})

"""The browser endpoints of the embeddable checkout: the only routes a publishable key opens, and
the only routes that answer CORS (for exactly the origins the merchant listed).

CORS: a preflight (`OPTIONS` with `Access-Control-Request-Method`) carries no key, so it cannot
say whose page asks; it is allowed when some merchant lists the origin. The request itself is
then checked against the key's own merchant: an `Origin` that merchant did not list is refused
(401 `origin_not_allowed`, nothing done) and gets no CORS headers, so the page cannot read it.
A request without `Origin` (not a browser) is served as any API request.
"""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post, route
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.di import Provide
from litestar.enums import HttpMethod
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from apss.api.common import (
    PUBLISHABLE_KEY_OPT,
    Services,
    bearer_token,
    idempotency_request,
    outcome_response,
)
from apss.errors import ApssError, AuthenticationFailed
from apss.services.idempotency import IdempotencyRequest
from apss.services.merchants.keys import Merchant
from apss.services.orders.browser import CheckoutSessionCreate, CheckoutSessionView

__all__ = ["BROWSER_PATH", "CheckoutSessionController"]

BROWSER_PATH = "/v1/checkout/sessions"
_ALLOWED_METHODS = "GET, POST"
_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
_EXPOSED_HEADERS = "Idempotent-Replayed, Retry-After"
_PREFLIGHT_MAX_AGE_S = 600
# A page's Idempotency-Keys live apart from the game server's: a page (anyone holding the public
# key) must not be able to take a key the server is about to use.
_BROWSER_KEY_PREFIX = "browser:"


async def browser_merchant(request: Request, svc: Services) -> Merchant:
    merchant = svc.merchants.authenticate_publishable(bearer_token(request))
    origin = request.headers.get("origin")
    if origin is not None and origin not in svc.merchants.allowed_origins(merchant.id):
        raise AuthenticationFailed("This page's origin is not among the merchant's allowed_origins.",
                                   code="origin_not_allowed")
    # A bucket apart from the secret key's: a busy page must not slow the game server down.
    svc.rate_limiter.take(f"pk:{merchant.id}")
    return merchant


def _cors_allowed(svc: Services, origin: str, authorization: str) -> bool:
    """May this origin read the answer? The key's merchant decides; without a valid key (the
    answer is a 401) any listed origin may, so that the page can show the error."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        try:
            merchant = svc.merchants.authenticate_publishable(token.strip())
        except ApssError:
            return svc.merchants.origin_listed(origin)
        return origin in svc.merchants.allowed_origins(merchant.id)
    return svc.merchants.origin_listed(origin)


def browser_cors(app: ASGIApp) -> ASGIApp:
    """Middleware of the browser endpoints only: answers preflights, adds CORS headers to answers."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = Headers.from_scope(scope)
        origin = headers.get("origin")
        svc: Services = scope["litestar_app"].state.services
        if scope["method"] == "OPTIONS":
            await _preflight(send, svc=svc, origin=origin, requested=headers.get("access-control-request-method"))
            return
        allowed = origin is not None and _cors_allowed(svc, origin, headers.get("authorization", ""))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableScopeHeaders.from_message(message)
                out.add("Vary", "Origin")
                if allowed:
                    assert origin is not None
                    out["Access-Control-Allow-Origin"] = origin
                    out["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
            await send(message)

        await app(scope, receive, send_with_cors)

    return middleware


async def _preflight(send: Send, *, svc: Services, origin: str | None, requested: str | None) -> None:
    headers = [(b"vary", b"Origin"), (b"allow", f"{_ALLOWED_METHODS}, OPTIONS".encode()), (b"content-length", b"0")]
    if origin is not None and requested in ("GET", "POST") and svc.merchants.origin_listed(origin):
        headers += [(b"access-control-allow-origin", origin.encode()),
                    (b"access-control-allow-methods", _ALLOWED_METHODS.encode()),
                    (b"access-control-allow-headers", _ALLOWED_HEADERS.encode()),
                    (b"access-control-max-age", str(_PREFLIGHT_MAX_AGE_S).encode())]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _browser_idempotency(request: Request, data: CheckoutSessionCreate) -> IdempotencyRequest | None:
    idem = idempotency_request(request, data)
    return None if idem is None else IdempotencyRequest(key=_BROWSER_KEY_PREFIX + idem.key, request_hash=idem.request_hash)


class CheckoutSessionController(Controller):
    path = BROWSER_PATH
    tags = ["checkout (browser)"]
    middleware = [browser_cors]
    opt = {PUBLISHABLE_KEY_OPT: True}  # the only routes api/common.py's refuse_publishable_key lets a pk_ key reach
    dependencies = {"browser": Provide(browser_merchant)}
    security = [{"bearer": []}]

    @post("/", status_code=201, summary="Start a checkout for a browser-sellable product (publishable key)",
          idempotent=True)
    async def start(self, data: CheckoutSessionCreate, request: Request, browser: Merchant,
                    svc: Services) -> Response[CheckoutSessionView]:
        idem = _browser_idempotency(request, data)
        return outcome_response(await svc.browser_checkout.start(merchant=browser, command=data, idem=idem))

    @get("/{order_id:str}", summary="The checkout link of an order a game server made (publishable key)")
    async def open(self, order_id: str, browser: Merchant, svc: Services) -> CheckoutSessionView:
        return await svc.browser_checkout.open(merchant=browser, order_id=order_id)

    # Preflights: answered by browser_cors before these run; declared so that the middleware
    # wraps OPTIONS on these paths (Litestar's automatic OPTIONS handler would bypass it).
    @route("/", http_method=HttpMethod.OPTIONS, include_in_schema=False, status_code=204)
    async def preflight_start(self) -> None:
        return None

    @route("/{order_id:str}", http_method=HttpMethod.OPTIONS, include_in_schema=False, status_code=204)
    async def preflight_open(self, order_id: str) -> None:
        return None

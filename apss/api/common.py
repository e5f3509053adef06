"""Shared pieces of the controllers: authentication dependencies,
the rate limit, Idempotency-Key handling, and list pagination."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.params import Parameter

from apss.errors import AuthenticationFailed, InvalidRequest
from apss.services.container import Services
from apss.services.idempotency import IdempotencyRequest, Outcome, request_hash
from apss.services.merchants.keys import PUBLISHABLE_PREFIX as PUBLISHABLE_KEY_PREFIX
from apss.services.merchants.keys import Merchant
from apss.services.views import encode

__all__ = [
    "Cursor",
    "Limit",
    "PUBLISHABLE_KEY_OPT",
    "Services",
    "admin_guard",
    "bearer_token",
    "current_merchant",
    "idempotency_request",
    "list_response",
    "outcome_response",
    "refuse_publishable_key",
]

Limit = Annotated[int, Parameter(ge=1, le=100, description="Page size (1-100).")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page.", max_length=64)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Provide your key as 'Authorization: Bearer <key>'.")
    return token.strip()


# The opt a route handler carries when a publishable key may call it (api/browser.py).
PUBLISHABLE_KEY_OPT = "publishable_key"


async def refuse_publishable_key(request: Request) -> None:
    """App-wide, before anything of the request is read (query, body): a publishable key is
    refused everywhere but the browser endpoints, with 401, whatever else is wrong."""
    if request.route_handler.opt.get(PUBLISHABLE_KEY_OPT):
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip().startswith(PUBLISHABLE_KEY_PREFIX):
        raise AuthenticationFailed("A publishable key works only for the checkout's browser endpoints "
                                   "(/v1/checkout/...); use a secret key here.", code="publishable_key_not_allowed")


async def current_merchant(request: Request, svc: Services) -> Merchant:
    merchant = svc.merchants.authenticate(bearer_token(request))
    svc.rate_limiter.take(merchant.id)
    return merchant


async def admin_guard(request: Request, svc: Services) -> None:
    svc.merchants.check_admin(bearer_token(request))


def idempotency_request(request: Request, body: Any) -> IdempotencyRequest | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(" " <= ch <= "~" for ch in key):
        raise InvalidRequest("Idempotency-Key must be 1-255 printable ASCII characters.",
                             code="invalid_idempotency_key", param="Idempotency-Key")
    builtins = msgspec.to_builtins(body) if body is not None else None
    return IdempotencyRequest(key=key, request_hash=request_hash(method=request.method, path=request.url.path, body=builtins))


def outcome_response(outcome: Outcome) -> Response:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return Response(content=outcome.body, status_code=outcome.status, media_type="application/json", headers=headers)


def list_response(items: list[Any], has_more: bool) -> Response:
    body = {"data": items, "has_more": has_more, "next_cursor": items[-1].id if has_more and items else None}
    return Response(content=encode(body), status_code=200, media_type="application/json")

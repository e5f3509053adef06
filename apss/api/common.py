"""Shared pieces of the controllers: authentication dependencies,
the rate limit, Idempotency-Key handling, and list pagination."""

from __future__ import annotations

import typing
from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
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
    "NOT_JSON",
    "PUBLISHABLE_KEY_OPT",
    "Services",
    "admin_guard",
    "authenticate_first",
    "authenticated_merchant",
    "bearer_of",
    "bearer_token",
    "current_merchant",
    "decode_strict",
    "idempotency_of",
    "idempotency_request",
    "list_response",
    "outcome_response",
    "refuse_publishable_key",
    "remember_merchant",
    "request_guard",
    "strict_json_body",
]

Limit = Annotated[int, Parameter(ge=1, le=100, description="Page size (1-100).")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page.", max_length=64)]


def bearer_of(headers: Any) -> str | None:
    """The bearer token of a request's raw ASGI headers (its first Authorization header), or None
    when there is none. Every reader of the key goes through here: the guards, the order fast
    path and the audit hook."""
    for name, value in headers or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def bearer_token(connection: ASGIConnection) -> str:
    token = bearer_of(connection.scope["headers"])
    if token is None:
        raise AuthenticationFailed("Provide your key as 'Authorization: Bearer <key>'.")
    return token


# The opt a route handler carries when a publishable key may call it (api/browser.py).
PUBLISHABLE_KEY_OPT = "publishable_key"


def refuse_publishable_key(connection: ASGIConnection, route_handler: BaseRouteHandler) -> None:
    """App guard, the first: before anything of the request is read (query, body), a publishable
    key is refused everywhere but the browser endpoints, with 401, whatever else is wrong."""
    if route_handler.opt.get(PUBLISHABLE_KEY_OPT):
        return
    token = bearer_of(connection.scope["headers"])
    if token is not None and token.startswith(PUBLISHABLE_KEY_PREFIX):
        raise AuthenticationFailed("A publishable key works only for the checkout's browser endpoints "
                                   "(/v1/checkout/...); use a secret key here.", code="publishable_key_not_allowed")


def _client_address(connection: ASGIConnection) -> str:
    return connection.client.host if connection.client is not None else "unknown"


_MERCHANT_STATE = "apss_merchant"
_ADMIN_STATE = "apss_admin"


def _authenticate_merchant(connection: ASGIConnection, svc: Services) -> Merchant:
    merchant = connection.scope["state"].get(_MERCHANT_STATE)
    if merchant is None:
        merchant = svc.merchants.authenticate(bearer_token(connection))
        svc.rate_limiter.take(merchant.id)
        remember_merchant(connection.scope, merchant)
    return merchant


def _authenticate_admin(connection: ASGIConnection, svc: Services) -> None:
    if not connection.scope["state"].get(_ADMIN_STATE):
        svc.merchants.check_admin(bearer_token(connection), address=_client_address(connection))
        connection.scope["state"][_ADMIN_STATE] = True


def remember_merchant(scope: Any, merchant: Merchant) -> None:
    """Marks the request as authenticated for `merchant` (what the guard does once it has checked
    the key and taken the rate limit's token): the audit hook and the dependencies read it."""
    scope.setdefault("state", {})[_MERCHANT_STATE] = merchant


def authenticated_merchant(scope: Any) -> Merchant | None:
    """The merchant this request's guard authenticated, if it did (the audit hook reuses it)."""
    return (scope.get("state") or {}).get(_MERCHANT_STATE)


async def current_merchant(request: Request, svc: Services) -> Merchant:
    return _authenticate_merchant(request, svc)


async def admin_guard(request: Request, svc: Services) -> None:
    _authenticate_admin(request, svc)


def authenticate_first(connection: ASGIConnection, route_handler: BaseRouteHandler) -> None:
    """App guard: a handler that takes `admin` or `merchant` authenticates before anything of
    the request is read (guards run before Litestar parses the body), so an unauthenticated
    request with a malformed body is 401, never a parser's message. The dependencies then reuse
    the result."""
    parameters = route_handler.parsed_fn_signature.parameters
    if "admin" not in parameters and "merchant" not in parameters:
        return
    svc = connection.app.state.services
    connection.scope.setdefault("state", {})
    if "admin" in parameters:
        _authenticate_admin(connection, svc)
    if "merchant" in parameters:
        _authenticate_merchant(connection, svc)


def idempotency_request(request: Request, body: Any) -> IdempotencyRequest | None:
    return idempotency_of(request.headers.get("idempotency-key"), method=request.method, path=request.url.path, body=body)


def idempotency_of(key: str | None, *, method: str, path: str, body: Any) -> IdempotencyRequest | None:
    """The request's Idempotency-Key with the hash of what it asks (method, path, decoded body)."""
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(" " <= ch <= "~" for ch in key):
        raise InvalidRequest("Idempotency-Key must be 1-255 printable ASCII characters.",
                             code="invalid_idempotency_key", param="Idempotency-Key")
    builtins = msgspec.to_builtins(body) if body is not None else None
    return IdempotencyRequest(key=key, request_hash=request_hash(method=method, path=path, body=builtins))


def outcome_response(outcome: Outcome) -> Response:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return Response(content=outcome.body, status_code=outcome.status, media_type="application/json", headers=headers)


def list_response(items: list[Any], has_more: bool) -> Response:
    body = {"data": items, "has_more": has_more, "next_cursor": items[-1].id if has_more and items else None}
    return Response(content=encode(body), status_code=200, media_type="application/json")


# Per handler function (Litestar passes guards a copy of the handler each time): its body type.
_BODY_TYPES: dict[Any, Any] = {}
_NO_STRICT_CHECK = object()


def _struct_body_type(route_handler: BaseRouteHandler) -> Any:
    """The `data` annotation when it is a msgspec Struct (or one or None), else _NO_STRICT_CHECK."""
    found = _BODY_TYPES.get(route_handler.fn)
    if found is None:
        parameter = route_handler.parsed_fn_signature.parameters.get("data")
        found = _NO_STRICT_CHECK
        if parameter is not None:
            annotation = parameter.annotation
            while typing.get_origin(annotation) is Annotated:
                annotation = typing.get_args(annotation)[0]
            members = typing.get_args(annotation) or (annotation,)
            if all(m is type(None) or (isinstance(m, type) and issubclass(m, msgspec.Struct)) for m in members):
                found = annotation
        _BODY_TYPES[route_handler.fn] = found
    return found


async def strict_json_body(connection: ASGIConnection, route_handler: BaseRouteHandler) -> None:
    """App guard, after authentication: a JSON body is decoded strictly against the handler's
    Struct first. Litestar converts bodies leniently ("1" and 1.0 become the integer 1); an
    amount or a quantity must be a JSON integer (400 parameter_invalid naming the field). Bodies
    that are not JSON at all are left to Litestar's own parsing (400 body_malformed)."""
    body_type = _struct_body_type(route_handler)
    if body_type is _NO_STRICT_CHECK or not isinstance(connection, Request):
        return
    body = await connection.body()
    if body.strip():
        decode_strict(body, body_type)


NOT_JSON = object()  # decode_strict's answer for a body that is not JSON


def decode_strict(body: bytes, body_type: Any) -> Any:
    """`body` decoded strictly as `body_type`; a JSON body that does not fit is InvalidRequest
    (parameter_invalid or parameter_missing, naming the field). A body that is not JSON at all
    gives `NOT_JSON`: Litestar's parser words that answer (400 body_malformed)."""
    try:
        return msgspec.json.decode(body, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        try:  # a type error found before the end of a body that is not JSON at all (trailing junk)
            msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):
            return NOT_JSON
        message, _, where = str(exc).partition(" - at `")
        path = where.rstrip("`").removeprefix("$").removeprefix(".").replace("[...]", "")  # [...]: a dict's key
        found = message.split("`")[1] if "field" in message and "`" in message else None
        if found:
            path = f"{path}.{found}" if path else found
        code = "parameter_missing" if "missing required" in message else "parameter_invalid"
        raise InvalidRequest(message, code=code, param=path or None) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return NOT_JSON


async def request_guard(connection: ASGIConnection, route_handler: BaseRouteHandler) -> None:
    """The app's one guard, the three checks above in their order. One async guard, not three:
    Litestar copies the handler for each guard it calls, and runs a plain (sync) guard in a
    worker thread, a thread hop per guard per request."""
    refuse_publishable_key(connection, route_handler)
    authenticate_first(connection, route_handler)
    await strict_json_body(connection, route_handler)

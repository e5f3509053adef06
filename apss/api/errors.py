"""The one place that knows HTTP statuses: typed errors -> `{"error": {type, code, message, param}}`.

Litestar's own errors (validation, malformed JSON, unknown route, body too large) are mapped
into the same shape; anything else is a bug, logged, and answered 500 `api_error`.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from apss import errors as e

__all__ = ["ErrorBody", "bug_answer", "error_answer", "exception_handlers", "render_error", "status_for"]

log = logging.getLogger("apss.api")

# Most specific class first: the first isinstance match wins.
_STATUS: list[tuple[type[e.ApssError], int, str]] = [
    (e.IdempotencyKeyInUse, 409, "idempotency_error"),
    (e.IdempotencyKeyReused, 422, "idempotency_error"),
    (e.InvalidRequest, 400, "invalid_request_error"),
    (e.ProviderFlowNotSupported, 400, "invalid_request_error"),
    (e.AuthenticationFailed, 401, "authentication_error"),
    (e.NotFound, 404, "invalid_request_error"),
    (e.Conflict, 409, "conflict_error"),
    (e.RateLimited, 429, "rate_limit_error"),
    (e.ChannelUnavailable, 502, "api_error"),
    (e.ProviderDeclined, 502, "api_error"),
    (e.NotReady, 503, "api_error"),
]


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    type: Literal["invalid_request_error", "authentication_error", "conflict_error", "idempotency_error",
                  "rate_limit_error", "api_error"]
    code: str
    message: str
    param: str | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorDetail


_encoder = msgspec.json.Encoder()


def status_for(error: e.ApssError) -> tuple[int, str]:
    for cls, status, error_type in _STATUS:
        if isinstance(error, cls):
            return status, error_type
    raise AssertionError(f"no HTTP mapping for {type(error).__name__}")


def render_error(error: e.ApssError) -> tuple[int, bytes]:
    status, error_type = status_for(error)
    detail = ErrorDetail(type=error_type, code=error.code, message=error.message, param=error.param)
    return status, _encoder.encode(ErrorBody(error=detail))


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def error_answer(exc: e.ApssError) -> tuple[int, bytes, dict[str, str] | None]:
    """Status, body and extra headers of a typed error's answer (Retry-After where a retry helps)."""
    status, body = render_error(exc)
    retry_after_s = getattr(exc, "retry_after_s", 1)
    headers = {"Retry-After": str(retry_after_s)} if status in (409, 429, 503) and not isinstance(exc, e.Conflict) else None
    return status, body, headers


def _apss_error(request: Request, exc: e.ApssError) -> Response:
    return _response(*error_answer(exc))


_FIELD_RE = re.compile(r"`([^`]+)`")


def _validation_error(request: Request, exc: ValidationException) -> Response:
    first = (exc.extra or [{}])[0] if isinstance(exc.extra, list) else {}
    message = str(first.get("message") or exc.detail)
    key = first.get("key")
    if message == "'data'":  # Litestar's words for a request without a body
        return _apss_error(request, e.InvalidRequest("A JSON request body is required.", code="body_missing"))
    param = None if key in (None, "data") else key
    found = _FIELD_RE.search(message)
    if found and "field" in message:  # msgspec names the unknown or missing field in the message
        param = f"{param}.{found.group(1)}" if param else found.group(1)
    code = "parameter_missing" if "missing required" in message else "parameter_invalid"
    return _apss_error(request, e.InvalidRequest(message, code=code, param=param))


def _http_error(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status >= 500:  # Litestar's own 500s (a dependency that failed) are bugs like any other
        return _bug(request, exc)
    if status == 404:
        error = e.NotFound("Unrecognized request URL.")
    elif status == 400:  # Litestar's plain 400s are bodies it could not decode
        error = e.InvalidRequest(f"The request body is not valid JSON: {exc.detail}", code="body_malformed")
    else:
        code = {405: "method_not_allowed", 413: "body_too_large", 415: "media_type_unsupported"}.get(status, "invalid_request")
        detail = ErrorDetail(type="invalid_request_error", code=code, message=str(exc.detail))
        return _response(status, _encoder.encode(ErrorBody(error=detail)), getattr(exc, "headers", None))
    return _apss_error(request, error)


def _undecodable(request: Request, exc: Exception) -> Response:
    """Bodies the JSON decoder chokes on before validation: bad UTF-8, absurd nesting."""
    if isinstance(exc, RecursionError) and "deserializ" not in str(exc):
        return _bug(request, exc)
    return _apss_error(request, e.InvalidRequest("The request body is not valid JSON.", code="body_malformed"))


def bug_answer(method: str, path_template: str | None) -> tuple[int, bytes]:
    """Logs the exception being handled and gives the 500 answer that says only that it was."""
    # The route template, not the path: a path holds player ids and link tokens, never logged.
    log.exception("unhandled error on %s %s", method, path_template or "(no route)")
    detail = ErrorDetail(type="api_error", code="internal_error", message="An internal error occurred; it has been logged.")
    return 500, _encoder.encode(ErrorBody(error=detail))


def _bug(request: Request, exc: Exception) -> Response:
    return _response(*bug_answer(request.method, request.scope.get("path_template")))


exception_handlers = {
    e.ApssError: _apss_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    UnicodeDecodeError: _undecodable,
    RecursionError: _undecodable,
    Exception: _bug,
}

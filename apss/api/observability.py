"""What the people who run APSS see of each request: a request id on every log line it causes and in
a `Request-Id` header on every answer, the request counted and timed for /metrics, and the log line
format (text or JSON lines) that cli.py installs.

The HTTP wrapper sits around Litestar's whole handler (routing included), so a 404 or 405 is
counted and answers with its id too; the error body keeps its one shape (the id is in the header
only)."""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from litestar import MediaType, Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from apss.api.common import Services, admin_guard
from apss.services.ops.metrics import CONTENT_TYPE

__all__ = ["JsonFormatter", "RequestContext", "configure_logging", "current_request_id", "metrics"]

_request_id: ContextVar[str | None] = ContextVar("apss_request_id", default=None)
# An incoming Request-Id is kept if it is 1-128 of these (safe in a header, a log line, a URL).
_SAFE_ID_RE = re.compile(rb"^[A-Za-z0-9._:+/=@-]{1,128}$")
_UNMATCHED = "unmatched"  # the route label of a request no route took (404, 405)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_tag)s]: %(message)s"


def current_request_id() -> str | None:
    """The id of the request being handled on this task (None outside any request)."""
    return _request_id.get()


def _request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"request-id":
            if _SAFE_ID_RE.match(value):
                return value.decode("ascii")
            break
    # Unique, not secret: a random prefix per process and a counter (no system call per request).
    return f"req_{_ID_PREFIX}{next(_id_counter):012x}"


_ID_PREFIX = secrets.token_hex(6)
_id_counter = itertools.count(1)


class RequestContext:
    """ASGI wrapper around Litestar's handler: sets the request id (the caller's, if it is safe, or
    a new one) for the request's task, adds `Request-Id` to the answer, and hands method, route
    template, status and duration to `observe` once the answer is sent."""

    def __init__(self, app: ASGIApp, *, observe: Any) -> None:
        self._app = app
        self._observe = observe  # Metrics.observe_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = _request_id_of(scope["headers"])
        header = (b"request-id", request_id.encode("ascii"))
        token = _request_id.set(request_id)
        began = time.perf_counter()
        status = 500  # the inner app raised before answering (Litestar answers its errors itself)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            self._observe(method=scope["method"], route=scope.get("path_template") or _UNMATCHED, status=status,
                          seconds=time.perf_counter() - began)
            _request_id.reset(token)


# -- log lines ---------------------------------------------------------------------------------
class _RequestIdFilter(logging.Filter):
    """Gives every record the id of the request it was logged in (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        record.request_tag = record.request_id or "-"  # the text format's
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339 with milliseconds), level, logger, message,
    request_id (null outside a request), and exception (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(*, log_format: Literal["text", "json"], level: str) -> None:
    """One handler on the root logger, on stderr: every logger (APSS's, uvicorn's) writes through it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# -- /metrics ----------------------------------------------------------------------------------
# Not in the OpenAPI document: it is Prometheus' endpoint, not the JSON API's (README "Operations"
# documents it), and with it in the document Swagger UI 5.35 rendered only the first few operations
# (tests/browser/test_schema_ui.py; the cause inside the UI is not understood yet).
@get("/metrics", include_in_schema=False, media_type=MediaType.TEXT, opt={"admin_unless_public": True},
     description="Requests by route template and status, latencies, write batches, the writer queue, orders by "
                 "status, payments by channel and status, the webhook backlog, open alerts, scheduler jobs. "
                 "Prometheus text format 0.0.4.")
async def metrics(request: Request, svc: Services) -> Response[bytes]:
    if not svc.config.server.metrics_public:
        await admin_guard(request, svc)
    return Response(content=await svc.metrics.render(), status_code=200, media_type=CONTENT_TYPE)

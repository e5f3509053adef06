"""What the tests' own small ASGI servers (provider stand-ins, webhook receivers) share."""

from __future__ import annotations

from typing import Any

__all__ = ["read_body"]


async def read_body(scope: dict[str, Any], receive: Any) -> bytes:
    """The whole request body of an HTTP scope, however many messages it came in."""
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body

"""The built-in sandbox provider: behaves like a real one (payer page, signed callbacks)."""

from apss.channels.sandbox.client import (
    SIGNATURE_HEADER,
    SandboxChannel,
    send_callback,
    sign_callback,
)
from apss.channels.sandbox.mapping import (
    MAGIC_KEY,
    THREE_DS_SUFFIX,
    SandboxOutcome,
    build_event,
    card_of,
    needs_challenge,
    parse_magic,
)

__all__ = [
    "MAGIC_KEY",
    "SIGNATURE_HEADER",
    "THREE_DS_SUFFIX",
    "SandboxChannel",
    "SandboxOutcome",
    "build_event",
    "card_of",
    "needs_challenge",
    "parse_magic",
    "send_callback",
    "sign_callback",
]

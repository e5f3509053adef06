"""Sandbox wire types (API.md "Sandbox callbacks") and their pure conversion; magic values.

Magic values (order `metadata["sandbox_outcome"]`, read when the payer pays):
- `declined`            the payment fails with failure_code `card_declined`
- `insufficient_funds`  the payment fails with failure_code `insufficient_funds`
- `delay_callback:N`    the callback is sent N seconds (1-3600) after the payer acted
- `duplicate_callback`  the same signed callback (same event id) is sent twice
- `lost_callback`       the payment completes but its callback is never sent: only a status
                        query (the janitor's) can tell
- `refund_fails`        refunds of the order fail (`refund_declined`)
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from apss.channels.base import CallbackEvent
from apss.domain.payments import CallbackKind
from apss.errors import CallbackRejected

__all__ = ["MAGIC_KEY", "SandboxEvent", "SandboxOutcome", "build_event", "decode_event", "parse_magic", "to_neutral"]

MAGIC_KEY = "sandbox_outcome"
_DELAY_RE = re.compile(r"^delay_callback:(\d{1,4})$")


class SandboxEventData(msgspec.Struct, frozen=True, kw_only=True):
    payment_id: str
    amount: int
    currency: str
    provider_ref: str
    failure_code: str | None = None
    refund_id: str | None = None


class SandboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: Literal["payment.succeeded", "payment.failed", "refund.succeeded", "refund.failed", "dispute.created"]
    created: int
    data: SandboxEventData


_decoder = msgspec.json.Decoder(SandboxEvent)
_encoder = msgspec.json.Encoder()


class SandboxOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What the sandbox does when the payer acts, after magic values are applied."""

    succeeded: bool
    failure_code: str | None
    delay_s: int
    copies: int


def parse_magic(metadata: dict[str, str], *, payer_pays: bool) -> SandboxOutcome:
    magic = metadata.get(MAGIC_KEY, "")
    delay_s, copies, failure_code = 0, 1, None if payer_pays else "payer_canceled"
    if magic in ("declined", "insufficient_funds") and payer_pays:
        failure_code = "card_declined" if magic == "declined" else "insufficient_funds"
    elif magic == "duplicate_callback":
        copies = 2
    elif magic == "lost_callback":
        copies = 0
    elif (match := _DELAY_RE.match(magic)) is not None:
        delay_s = min(int(match.group(1)), 3600)
    return SandboxOutcome(succeeded=failure_code is None, failure_code=failure_code, delay_s=delay_s, copies=copies)


def build_event(*, event_id: str, kind: CallbackKind, created_s: int, payment_id: str, amount: int,
                currency: str, provider_ref: str, failure_code: str | None = None) -> bytes:
    data = SandboxEventData(payment_id=payment_id, amount=amount, currency=currency,
                            provider_ref=provider_ref, failure_code=failure_code)
    return _encoder.encode(SandboxEvent(id=event_id, type=kind.value, created=created_s, data=data))


def decode_event(body: bytes) -> SandboxEvent:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise CallbackRejected(f"sandbox callback body is not a sandbox event: {exc}") from None


def to_neutral(event: SandboxEvent) -> CallbackEvent:
    return CallbackEvent(
        event_id=event.id,
        kind=CallbackKind(event.type),
        payment_id=event.data.payment_id,
        provider_ref=event.data.provider_ref,
        amount=event.data.amount,
        currency=event.data.currency,
        failure_code=event.data.failure_code,
        refund_id=event.data.refund_id,
    )

"""The payment channel Protocol, the neutral types that cross it, and the registry.

Every provider (sandbox, stripe, paypal, alipay, wechatpay) is one package under channels/ with
a `client.py` (I/O, auth, signatures) and a `mapping.py` (pure wire conversion, every provider
status listed plus an `unknown` fallback). Services speak only these neutral types; no provider
type leaks past a channel package. Channels never touch the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol, runtime_checkable

import msgspec

from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import ProviderFlowNotSupported

__all__ = [
    "CallbackEvent",
    "CallbackReply",
    "CallbackRequest",
    "Channel",
    "ChannelRegistry",
    "Credentials",
    "flow_not_supported",
    "NextAction",
    "PaymentCreated",
    "PaymentQuery",
    "PaymentReport",
    "PaymentRequest",
    "RefundRequest",
    "RefundResult",
    "Setting",
    "StatementLine",
]

# A merchant's decrypted settings for one channel (API.md "Channel settings"); for the sandbox,
# {"webhook_secret": ...}. Never logged, never repr'd by a channel.
Credentials = Mapping[str, str]


class _Neutral(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Setting(_Neutral):
    """One field of a merchant's settings for a channel (API.md "Channel settings")."""

    secret: bool  # sealed at rest, never returned or logged after it is saved
    required: bool = True


class NextAction(_Neutral):
    """What the payer is sent to: API.md's `next_action` (exactly one of url, data, value)."""

    type: Literal["redirect", "qr_code", "client_secret"]
    url: str | None = None
    data: str | None = None
    value: str | None = None

    def __post_init__(self) -> None:
        present = {"redirect": self.url, "qr_code": self.data, "client_secret": self.value}
        assert present[self.type], f"next_action {self.type} needs its field"


class PaymentRequest(_Neutral):
    payment_id: str  # ours; also the idempotency key at the provider, so a retry finds the first
    order_id: str
    merchant_id: str
    amount: int  # minor units
    currency: str
    description: str
    callback_url: str  # /v1/channels/{channel}/webhook/{merchant_id} under server.public_url
    return_url: str | None = None
    player_id: str = ""
    metadata: dict[str, str] = {}


class PaymentCreated(_Neutral):
    provider_ref: str
    status: PaymentStatus
    next_action: NextAction | None = None


class CallbackRequest(_Neutral):
    """A provider callback exactly as received: raw body bytes, headers with lower-case names."""

    headers: dict[str, str]
    body: bytes
    now_s: int
    query: dict[str, str] = {}


class CallbackEvent(_Neutral):
    """One verified provider event, converted to neutral terms."""

    event_id: str  # the provider's event id: callbacks are applied once per (channel, event_id)
    kind: CallbackKind
    payment_id: str | None = None  # ours, when the provider echoes it
    provider_ref: str | None = None
    amount: int | None = None  # minor units, as the provider reports it
    currency: str | None = None
    failure_code: str | None = None
    refund_id: str | None = None
    provider_refund_ref: str | None = None


class CallbackReply(_Neutral):
    """Exactly what the provider expects back (Alipay's bare `success`, 2xx for Stripe...)."""

    status_code: int
    body: bytes = b""
    media_type: str = "text/plain"


class RefundRequest(_Neutral):
    refund_id: str  # ours; also the idempotency key at the provider
    payment_id: str
    provider_ref: str
    amount: int
    currency: str
    reason: str | None = None
    metadata: dict[str, str] = {}  # the order's metadata (the sandbox reads its magic values here)


class RefundResult(_Neutral):
    provider_refund_ref: str
    status: Literal["pending", "succeeded", "failed"]
    failure_code: str | None = None


class PaymentQuery(_Neutral):
    payment_id: str
    provider_ref: str | None
    amount: int
    currency: str


class PaymentReport(_Neutral):
    status: PaymentStatus
    provider_ref: str | None = None
    amount: int | None = None
    currency: str | None = None
    failure_code: str | None = None


class StatementLine(_Neutral):
    """One row of a provider statement, for reconciliation."""

    provider_ref: str
    kind: Literal["payment", "refund", "fee", "adjustment", "payout", "other"]
    amount: int  # minor units, gross, signed as the provider reports it
    fee: int
    currency: str
    occurred_at_s: int | None = None
    payment_id: str | None = None


@runtime_checkable
class Channel(Protocol):
    """A payment channel. Slow calls are async; they are made between write transactions."""

    name: str
    test_only: bool  # the sandbox: test merchants only
    settings: dict[str, Setting]  # what a merchant stores for this channel; `api_base` is optional

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        """Create the payment at the provider; raises ChannelUnavailable if it cannot tell."""
        ...

    async def verify_callback(self, request: CallbackRequest, credentials: Credentials) -> list[CallbackEvent]:
        """Check signature and timestamp before anything else; raises CallbackRejected."""
        ...

    def callback_reply(self, *, accepted: bool) -> CallbackReply: ...

    async def capture_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        """Capture a payment the payer approved (PayPal); others raise ProviderFlowNotSupported."""
        ...

    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult: ...

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport: ...

    def parse_statement(self, data: bytes) -> list[StatementLine]: ...


def flow_not_supported(channel: str, flow: str) -> ProviderFlowNotSupported:
    return ProviderFlowNotSupported(f"the {channel} channel does not support {flow} yet")


class ChannelRegistry:
    """Channels by name; registering a name twice is a programmer error (Litestar's registries)."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def register(self, channel: Channel) -> None:
        assert isinstance(channel, Channel), channel
        if channel.name in self._channels:
            raise ValueError(f"a channel named {channel.name!r} is already registered")
        self._channels[channel.name] = channel

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def names(self) -> list[str]:
        return list(self._channels)

"""The payment state machine (Stripe-style statuses) and the neutral callback event kinds."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from apss.errors import InvalidTransition

__all__ = ["CallbackKind", "ChannelOptions", "FLOWS", "Flow", "PaymentStatus", "TERMINAL_PAYMENT_STATUSES",
           "WALLET_CHANNEL", "payment_transition"]


class PaymentStatus(enum.StrEnum):
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"  # the outcome is not known yet (a crash or timeout); never guessed


class CallbackKind(enum.StrEnum):
    PAYMENT_APPROVED = "payment.approved"  # the payer approved; the merchant must capture (PayPal)
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_FAILED = "payment.failed"
    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"
    DISPUTE_CREATED = "dispute.created"
    DISPUTE_UPDATED = "dispute.updated"  # a status change short of the end (evidence under review)
    DISPUTE_CLOSED = "dispute.closed"  # won or lost


P = PaymentStatus
TERMINAL_PAYMENT_STATUSES = frozenset({P.SUCCEEDED})

_ALLOWED: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    P.UNKNOWN: frozenset({P.REQUIRES_ACTION, P.PROCESSING, P.SUCCEEDED, P.FAILED, P.CANCELED}),
    P.REQUIRES_ACTION: frozenset({P.PROCESSING, P.SUCCEEDED, P.FAILED, P.CANCELED}),
    P.PROCESSING: frozenset({P.SUCCEEDED, P.FAILED, P.CANCELED}),
    # A payment canceled on our side (order expired) may still be captured by a slow payer.
    P.CANCELED: frozenset({P.SUCCEEDED}),
    # A declined attempt may be followed by a successful one (Stripe sends payment_failed, then
    # succeeded); success is the only final state.
    P.FAILED: frozenset({P.SUCCEEDED}),
    P.SUCCEEDED: frozenset(),
}


def payment_transition(current: PaymentStatus, target: PaymentStatus) -> PaymentStatus:
    if target not in _ALLOWED[current]:
        raise InvalidTransition(f"a payment in status '{current.value}' cannot become '{target.value}'")
    return target


# Orders priced in a virtual currency are paid from the player's wallet, in the order's own
# write transaction: no provider, so this channel is not in the channel registry.
WALLET_CHANNEL = "wallet"


# How the payer's side completes a payment (API.md "More channels"): `native` a QR code (WeChat
# Native, Alipay precreate), `jsapi` inside WeChat or a mini-program (needs the payer's openid),
# `app` the provider's SDK in a mobile app, `h5` a mobile browser outside WeChat, `page` Alipay's
# desktop cashier, `wap` Alipay's mobile cashier.
Flow = Literal["native", "jsapi", "app", "h5", "page", "wap"]
FLOWS: tuple[str, ...] = Flow.__args__  # type: ignore[attr-defined]


class ChannelOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """An order's `channel_options`: the flow its payment is created with, and what it needs."""

    flow: Flow
    # WeChat's per-app id of the payer (28 characters today); jsapi only.
    openid: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]{1,128}$")] | None = None

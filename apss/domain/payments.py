"""The payment state machine (Stripe-style statuses) and the neutral callback event kinds."""

from __future__ import annotations

import enum

from apss.errors import InvalidTransition

__all__ = ["CallbackKind", "PaymentStatus", "TERMINAL_PAYMENT_STATUSES", "WALLET_CHANNEL", "payment_transition"]


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

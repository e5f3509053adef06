"""The order state machine, as data: statuses, events, and one pure `transition`."""

from __future__ import annotations

import enum

from apss.errors import InvalidTransition

__all__ = ["ACTIVE_FOR_LIMITS", "PAID_OR_LATER", "REFUNDABLE", "OrderEvent", "OrderStatus", "TRANSITIONS", "transition"]


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    DELIVERING = "delivering"
    FULFILLED = "fulfilled"
    EXPIRED = "expired"
    CANCELED = "canceled"
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    IN_REVIEW = "in_review"  # paid, held for a risk review (or a KYC check) before delivery


class OrderEvent(enum.StrEnum):
    PAYMENT_SUCCEEDED = "payment_succeeded"
    PAYMENT_FAILED = "payment_failed"
    EXPIRE = "expire"
    CANCEL = "cancel"
    START_DELIVERY = "start_delivery"
    DELIVER = "deliver"
    REFUND_PARTIAL = "refund_partial"
    REFUND_FULL = "refund_full"
    HOLD_FOR_REVIEW = "hold_for_review"


S, E = OrderStatus, OrderEvent
# Orders that were paid and still hold money a refund can return (the one definition).
REFUNDABLE = frozenset({S.PAID, S.DELIVERING, S.FULFILLED, S.PARTIALLY_REFUNDED})
# Orders that were paid at some point (sales counts).
PAID_OR_LATER = REFUNDABLE | {S.REFUNDED, S.IN_REVIEW}

TRANSITIONS: dict[tuple[OrderStatus, OrderEvent], OrderStatus] = {
    (S.PENDING, E.PAYMENT_SUCCEEDED): S.PAID,
    (S.PENDING, E.PAYMENT_FAILED): S.FAILED,
    (S.PENDING, E.EXPIRE): S.EXPIRED,
    (S.PENDING, E.CANCEL): S.CANCELED,
    # A payment that succeeds after its order ended unpaid revives it when the stock can still
    # be taken (the caller checks stock before asking); otherwise it is an anomaly for refund.
    (S.EXPIRED, E.PAYMENT_SUCCEEDED): S.PAID,
    (S.CANCELED, E.PAYMENT_SUCCEEDED): S.PAID,
    (S.FAILED, E.PAYMENT_SUCCEEDED): S.PAID,
    (S.PAID, E.DELIVER): S.FULFILLED,
    (S.PAID, E.START_DELIVERY): S.DELIVERING,
    (S.DELIVERING, E.DELIVER): S.FULFILLED,
    # Held by a risk rule (or KYC): approving delivers, rejecting refunds in full (nothing was
    # delivered, so nothing is taken back; a partial refund leaves it held).
    (S.PAID, E.HOLD_FOR_REVIEW): S.IN_REVIEW,
    (S.IN_REVIEW, E.DELIVER): S.FULFILLED,
    (S.IN_REVIEW, E.START_DELIVERY): S.DELIVERING,
    (S.IN_REVIEW, E.REFUND_FULL): S.REFUNDED,
    **{(status, E.REFUND_PARTIAL): S.PARTIALLY_REFUNDED for status in sorted(REFUNDABLE)},
    **{(status, E.REFUND_FULL): S.REFUNDED for status in sorted(REFUNDABLE)},
}

# Orders whose quantities count against a product's per-player purchase limit.
ACTIVE_FOR_LIMITS = (S.PENDING, S.PAID, S.DELIVERING, S.FULFILLED, S.PARTIALLY_REFUNDED)


def transition(current: OrderStatus, event: OrderEvent) -> OrderStatus:
    """The status after `event`, or InvalidTransition: an illegal move is an error, never a no-op."""
    target = TRANSITIONS.get((current, event))
    if target is None:
        raise InvalidTransition(
            f"an order in status '{current.value}' cannot take the event '{event.value}'"
        )
    assert target != current or event is E.REFUND_PARTIAL
    return target

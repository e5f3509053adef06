"""The refund state machine: a refund waits `pending` until its provider says, then ends
`succeeded` or `failed`. A success reported after a failure is applied (the money went back;
the provider is the authority on that), with an alert; nothing leaves `succeeded`."""

from __future__ import annotations

import enum

from apss.errors import InvalidTransition

__all__ = ["REFUND_TRANSITIONS", "RefundStatus", "refund_transition"]


class RefundStatus(str, enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


R = RefundStatus
REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    R.PENDING: frozenset({R.SUCCEEDED, R.FAILED}),
    R.FAILED: frozenset({R.SUCCEEDED}),
    R.SUCCEEDED: frozenset(),
}


def refund_transition(current: RefundStatus, target: RefundStatus) -> RefundStatus:
    if target not in REFUND_TRANSITIONS[current]:
        raise InvalidTransition(f"a refund in status '{current.value}' cannot become '{target.value}'")
    return target

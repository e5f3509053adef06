"""The refund state machine: a refund waits `pending` until its provider says, then ends
`succeeded` or `failed`. A success reported after a failure is applied (the money went back;
the provider is the authority on that), with an alert; nothing leaves `succeeded`.

A send that never reached the provider (connection refused) or whose outcome is unknown (a
timeout after sending, a 5xx) is sent again under the same idempotency key after a backoff
(`resend_delay_s`), up to a number of sends; a definite refusal is final at once."""

from __future__ import annotations

import enum

from apss.errors import InvalidTransition

__all__ = ["REFUND_TRANSITIONS", "RefundStatus", "refund_transition", "resend_delay_s"]


class RefundStatus(enum.StrEnum):
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


def resend_delay_s(sends: int, *, backoff_s: tuple[int, ...], sends_max: int) -> int | None:
    """The wait before sending a refund again after `sends` sends without a final answer (the
    n-th wait of `backoff_s`, its last one repeating); None when that was the last send allowed."""
    assert sends >= 1 and backoff_s
    if sends >= sends_max:
        return None
    return backoff_s[min(sends, len(backoff_s)) - 1]

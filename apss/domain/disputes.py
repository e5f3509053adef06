"""Disputes (chargebacks): the state machine, the provider statuses mapped onto it, and the
ledger rule for a dispute the merchant won.

A dispute opens `needs_response` (the merchant may answer with evidence until `evidence_due_by`),
moves to `under_review` once evidence is submitted (or the provider says so), and ends `won` or
`lost`. A closed dispute never reopens: a later report is stale. A provider may report a status
that skips a step (closed straight from `needs_response`), which the table allows.

Money: the chargeback itself is booked when the dispute opens (the provider takes the disputed
amount at once), as a forced refund of ledger kind `chargeback` (services/refunds). A dispute
`won` gives it back: the chargeback's own entries, each side swapped (`won_entries`), under ledger
kind `chargeback_reversed`; `lost` keeps it. An inquiry (Stripe's `warning_*` statuses: the bank
asks, no money moved) is recorded without booking anything.
"""

from __future__ import annotations

import enum

from apss.domain.ledger import Entry, check_balanced
from apss.errors import InvalidTransition

__all__ = [
    "CLOSED_DISPUTE_STATUSES",
    "DISPUTE_TRANSITIONS",
    "DisputeStatus",
    "dispute_transition",
    "won_entries",
]


class DisputeStatus(enum.StrEnum):
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"


D = DisputeStatus
DISPUTE_TRANSITIONS: dict[DisputeStatus, frozenset[DisputeStatus]] = {
    D.NEEDS_RESPONSE: frozenset({D.UNDER_REVIEW, D.WON, D.LOST}),
    D.UNDER_REVIEW: frozenset({D.WON, D.LOST}),
    D.WON: frozenset(),
    D.LOST: frozenset(),
}
CLOSED_DISPUTE_STATUSES = frozenset({D.WON, D.LOST})


def dispute_transition(current: DisputeStatus, target: DisputeStatus) -> DisputeStatus:
    if target not in DISPUTE_TRANSITIONS[current]:
        raise InvalidTransition(f"a dispute in status '{current.value}' cannot become '{target.value}'")
    return target


def won_entries(chargeback: list[Entry]) -> list[Entry]:
    """A won dispute returns exactly what its chargeback took: every entry with its sides swapped
    (clearing back up, the merchant's payable, commission and partner shares as they were)."""
    assert chargeback, "a reversal needs the chargeback's entries"
    reversed_ = [Entry(account=e.account, currency=e.currency, debit=e.credit, credit=e.debit) for e in chargeback]
    check_balanced(reversed_)
    assert sum(e.debit for e in reversed_) == sum(e.credit for e in chargeback)
    return reversed_

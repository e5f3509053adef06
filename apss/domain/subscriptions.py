"""Subscription rules, no I/O: billing plans, period arithmetic, the status machine, retries,
hard declines and proration.

Periods are computed from the anchor (the start of period 0), never from the previous end, so a
subscription started on the 31st renews on the last day of a shorter month and on the 31st again
when the month has one (Jan 31 -> Feb 28/29 -> Mar 31 -> Apr 30 ...).
"""

from __future__ import annotations

import calendar
import enum
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.errors import InvalidTransition

__all__ = [
    "HARD_DECLINE_CODES",
    "Billing",
    "Interval",
    "LIVE",
    "Proration",
    "SubscriptionEvent",
    "SubscriptionStatus",
    "TRANSITIONS",
    "add_intervals",
    "monthly_amount",
    "period_bounds_ms",
    "prorate",
    "retry_at_ms",
    "round_half_even",
    "transition",
]

_DAY_MS = 86_400_000
INTERVAL_COUNT_MAX = 366


class Interval(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


class Billing(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A plan's billing period: every `interval_count` `interval`s (API.md)."""

    interval: Interval
    interval_count: Annotated[int, Meta(ge=1, le=INTERVAL_COUNT_MAX)] = 1


def _add_months(start: datetime, months: int) -> datetime:
    """`start` moved by whole months, the day clamped to the target month's last day."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def add_intervals(anchor_ms: int, billing: Billing, periods: int) -> int:
    """The time `periods` billing periods after `anchor_ms` (UTC), computed from the anchor."""
    assert anchor_ms >= 0 and periods >= 0
    units = billing.interval_count * periods
    if billing.interval is Interval.DAY:
        return anchor_ms + units * _DAY_MS
    if billing.interval is Interval.WEEK:
        return anchor_ms + units * 7 * _DAY_MS
    start = datetime.fromtimestamp(anchor_ms // 1000, tz=UTC) + timedelta(milliseconds=anchor_ms % 1000)
    months = units if billing.interval is Interval.MONTH else units * 12
    moved = _add_months(start, months)
    result = int(moved.timestamp()) * 1000 + moved.microsecond // 1000
    assert result > anchor_ms or periods == 0
    return result


def period_bounds_ms(anchor_ms: int, billing: Billing, index: int) -> tuple[int, int]:
    """(start, end) of period `index` (0 is the first, paid by the first order)."""
    assert index >= 0
    start, end = add_intervals(anchor_ms, billing, index), add_intervals(anchor_ms, billing, index + 1)
    assert start < end
    return start, end


class SubscriptionStatus(enum.StrEnum):
    INCOMPLETE = "incomplete"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    INCOMPLETE_EXPIRED = "incomplete_expired"


class SubscriptionEvent(enum.StrEnum):
    FIRST_PAID = "first_paid"
    FIRST_UNPAID = "first_unpaid"  # the first order expired, was canceled or failed
    RENEWED = "renewed"
    PAYMENT_FAILED = "payment_failed"
    CANCEL = "cancel"
    RESUME = "resume"  # undo a cancel scheduled for the period end
    CHANGE = "change"


St, Ev = SubscriptionStatus, SubscriptionEvent
# Subscriptions that hold a membership and are billed (counted as live in reports).
LIVE = frozenset({St.ACTIVE, St.PAST_DUE})

TRANSITIONS: dict[tuple[SubscriptionStatus, SubscriptionEvent], SubscriptionStatus] = {
    (St.INCOMPLETE, Ev.FIRST_PAID): St.ACTIVE,
    (St.INCOMPLETE, Ev.FIRST_UNPAID): St.INCOMPLETE_EXPIRED,
    (St.INCOMPLETE, Ev.CANCEL): St.CANCELED,
    (St.ACTIVE, Ev.RENEWED): St.ACTIVE,
    (St.PAST_DUE, Ev.RENEWED): St.ACTIVE,
    (St.ACTIVE, Ev.PAYMENT_FAILED): St.PAST_DUE,
    (St.PAST_DUE, Ev.PAYMENT_FAILED): St.PAST_DUE,
    (St.ACTIVE, Ev.CANCEL): St.CANCELED,
    (St.PAST_DUE, Ev.CANCEL): St.CANCELED,
    (St.ACTIVE, Ev.RESUME): St.ACTIVE,
    (St.PAST_DUE, Ev.RESUME): St.PAST_DUE,
    (St.ACTIVE, Ev.CHANGE): St.ACTIVE,
}


def transition(current: SubscriptionStatus, event: SubscriptionEvent) -> SubscriptionStatus:
    """The status after `event`, or InvalidTransition (409 `invalid_state` through the API)."""
    target = TRANSITIONS.get((current, event))
    if target is None:
        raise InvalidTransition(f"a subscription in status '{current.value}' cannot take the event '{event.value}'")
    return target


# Decline codes that mean "never retry this card" (the card is reported lost or stolen, the bank
# says fraud, the cardholder stopped this merchant's charges, or the card can never be charged).
# The sandbox's `hard_decline` answers `stolen_card`; the Stripe channel passes Stripe's
# decline_code through (https://docs.stripe.com/declines/codes). Stripe's table gives no explicit
# retry flag, so this list holds only the codes whose next step can never be another attempt on
# the same card; `do_not_honor`, `generic_decline`, `insufficient_funds`, `try_again_later` and
# `authentication_required` (the payer is absent, not refused) are soft: retried on schedule.
HARD_DECLINE_CODES = frozenset({
    "stolen_card", "lost_card", "pickup_card", "fraudulent", "restricted_card", "security_violation",
    "revocation_of_all_authorizations", "revocation_of_authorization", "stop_payment_order", "invalid_account",
    "new_account_information_available", "merchant_blacklist", "card_not_supported",
    "transaction_not_allowed", "do_not_try_again",
})


def retry_at_ms(first_failure_ms: int, retry_days: tuple[int, ...], retries_done: int) -> int | None:
    """When the next retry is due (offsets count from the first failure), None when every retry
    has been made."""
    assert retries_done >= 0 and all(a < b for a, b in zip(retry_days, retry_days[1:])), retry_days
    if retries_done >= len(retry_days):
        return None
    return first_failure_ms + retry_days[retries_done] * _DAY_MS


def round_half_even(value: Fraction) -> int:
    """Exact: Fraction's round() rounds a tie to the even integer."""
    return round(value)


class Proration(msgspec.Struct, frozen=True, kw_only=True):
    credit: int  # unused time of the current plan, in minor units
    charge: int  # the remaining time on the new plan
    net: int  # charge - credit: charged now when positive

    def __post_init__(self) -> None:
        assert self.net == self.charge - self.credit and self.credit >= 0 and self.charge >= 0


def prorate(*, old_amount: int, new_amount: int, period_start_ms: int, period_end_ms: int, now_ms: int) -> Proration:
    """Credit for the unused part of the period at the old price, charge for it at the new price:
    each is `amount x remaining / period` in exact fractions, rounded half-even to the minor
    unit on its own; the net is their difference (so it is exact to the unit)."""
    assert period_start_ms <= now_ms < period_end_ms and old_amount >= 0 and new_amount >= 0
    remaining = Fraction(period_end_ms - now_ms, period_end_ms - period_start_ms)
    credit, charge = round_half_even(old_amount * remaining), round_half_even(new_amount * remaining)
    return Proration(credit=credit, charge=charge, net=charge - credit)


_MONTHS_PER_INTERVAL = {Interval.DAY: Fraction(12, 365), Interval.WEEK: Fraction(12, 52),
                        Interval.MONTH: Fraction(1), Interval.YEAR: Fraction(12)}


def monthly_amount(amount: int, billing: Billing) -> Fraction:
    """The amount per month (MRR share) of a plan, exact: a year is 12 months, 52 weeks or 365 days."""
    assert amount >= 0
    return Fraction(amount) / (_MONTHS_PER_INTERVAL[billing.interval] * billing.interval_count)

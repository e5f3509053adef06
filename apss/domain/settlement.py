"""Settlement rules, pure: when a merchant's cut-offs fall, which activity a batch covers, the
rolling reserve, how a batch's lines add up, and how a payout splits across channels.

Cut-offs are wall-clock times in the merchant's time zone (an IANA name, read with zoneinfo):
- `daily`: every day at `cutoff_time` local; `weekly`: on `weekday` (0 = Monday) at `cutoff_time`;
- `t_plus`: daily cut-offs, but the batch made at the cut-off of local day D covers the activity
  up to the cut-off of day D - N (what was earned N days ago is paid now);
- `manual`: no cut-offs: the merchant settles on demand (the cut-off is then "now").
Daylight saving: a cut-off inside a spring-forward gap happens when the wall clock passes it
(02:30 on a day that skips 02:00-03:00 is 03:30 new time, PEP 495 fold=0); an ambiguous one
(01:30 on a fall-back day) is its first occurrence. So every local day has exactly one cut-off,
and cut-offs strictly increase (23 h apart at least).

A batch covers [previous period end, this period end): consecutive, so every ledger transaction
is settled exactly once. Its lines are one per ledger transaction (payment, refund, chargeback,
adjustment) plus the carried-in nets of batches that stayed below the minimum payout, the
reserve released, and the reserve held, each per channel. Rolling reserve: `reserve_bps` of the
batch's gross (half-even), split over the channels by their gross (the remainder on the largest),
released in the first batch whose cut-off is at or after the same wall-clock time
`reserve_hold_days` local days later. A batch whose net payable is below the currency's minimum
(or not positive) is `carried`: its net is brought into the next batch of that currency.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from apss.domain.ledger import Entry, check_balanced, share

__all__ = [
    "CATCH_UP_DAYS_MAX",
    "LINE_KINDS",
    "UNASSIGNED_CHANNEL",
    "Batch",
    "Cycle",
    "Line",
    "Schedule",
    "activity_end_ms",
    "ACTIVITY_FAMILIES",
    "activity_line",
    "allocate",
    "batch_status",
    "build_batch",
    "cutoff_on",
    "cutoffs_between",
    "is_time_zone",
    "line_totals",
    "local_date",
    "payment_gross_by_channel",
    "payout_entries",
    "reserve_hold_lines",
    "reserve_release_at_ms",
]

Cycle = Literal["daily", "weekly", "t_plus", "manual"]
LINE_KINDS = ("payment", "refund", "chargeback", "reserve_hold", "reserve_release", "adjustment", "carried")
# Ledger transaction kinds a batch takes, and the line kind each becomes.
_ACTIVITY_KINDS = {"payment_captured": "payment", "refund": "refund", "chargeback": "chargeback",
                   "chargeback_reversed": "chargeback", "adjustment": "adjustment"}
# A payout with no channel activity behind it (only manual adjustments) is drawn from here.
UNASSIGNED_CHANNEL = "unassigned"
# Days scanned for cut-offs in one call: bounds the work of a catch-up after a long downtime.
CATCH_UP_DAYS_MAX = 3660
_CUTOFF_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    cycle: Cycle
    cutoff_time: str = "00:00"  # HH:MM, local
    timezone: str = "UTC"  # IANA name
    weekday: int | None = None  # weekly only; 0 = Monday
    t_plus_days: int = 0  # t_plus only
    minimum_payout: dict[str, int] = {}  # per currency, minor units
    reserve_bps: int = 0
    reserve_hold_days: int = 0

    def __post_init__(self) -> None:
        assert _CUTOFF_TIME_RE.match(self.cutoff_time), self.cutoff_time
        assert self.cycle != "weekly" or self.weekday is not None and 0 <= self.weekday <= 6, self
        assert 0 <= self.t_plus_days and 0 <= self.reserve_bps <= 10_000 and 0 <= self.reserve_hold_days, self


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a batch. Amounts are signed: money in positive, refunds and holds negative."""

    kind: str
    reference: str  # the payment, refund or adjustment; for reserve and carried lines a settlement
    order_id: str | None
    channel: str | None
    amount: int  # gross moved at the provider (payment: gross, refund: -amount)
    fee: int
    commission: int
    partner_shares: int
    net: int  # the merchant's part
    occurred_at_ms: int

    def __post_init__(self) -> None:
        assert self.kind in LINE_KINDS, self.kind


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["pending", "carried"]
    lines: list[Line]
    gross: int
    refunds: int
    chargebacks: int
    fees: int
    commission: int
    partner_shares: int
    reserve_held: int
    reserve_released: int
    carried_in: int
    net_payable: int


def is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _zone(schedule: Schedule) -> ZoneInfo:
    return ZoneInfo(schedule.timezone)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def local_date(schedule: Schedule, at_ms: int) -> date:
    """The merchant's calendar day at an instant."""
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(_zone(schedule)).date()


def cutoff_on(schedule: Schedule, day: date) -> int:
    """The cut-off instant (UTC ms) of a local day, whatever the cycle's weekday."""
    hour, minute = (int(part) for part in schedule.cutoff_time.split(":"))
    # fold=0: a time in a spring-forward gap falls after the gap; an ambiguous one is the first.
    return _ms(datetime.combine(day, time(hour, minute), tzinfo=_zone(schedule)))


def cutoffs_between(schedule: Schedule, *, after_ms: int, until_ms: int, count_max: int) -> list[int]:
    """The cycle's cut-offs c with after_ms < c <= until_ms, ascending, at most `count_max`."""
    assert count_max >= 1
    if schedule.cycle == "manual" or until_ms <= after_ms:
        return []
    day = local_date(schedule, after_ms) - timedelta(days=1)
    last_day = local_date(schedule, until_ms)
    found: list[int] = []
    for _ in range(CATCH_UP_DAYS_MAX):
        if day > last_day or len(found) == count_max:
            break
        if schedule.cycle != "weekly" or day.weekday() == schedule.weekday:
            cutoff = cutoff_on(schedule, day)
            if after_ms < cutoff <= until_ms:
                found.append(cutoff)
        day += timedelta(days=1)
    assert all(a < b for a, b in itertools.pairwise(found)), found
    return found


def activity_end_ms(schedule: Schedule, cutoff_ms: int) -> int:
    """The end of the activity a batch made at `cutoff_ms` covers (exclusive)."""
    if schedule.cycle != "t_plus" or schedule.t_plus_days == 0:
        return cutoff_ms
    end = cutoff_on(schedule, local_date(schedule, cutoff_ms) - timedelta(days=schedule.t_plus_days))
    assert end < cutoff_ms
    return end


def reserve_release_at_ms(schedule: Schedule, held_at_ms: int) -> int:
    """A reserve held at `held_at_ms` is due back at the same wall-clock time, hold days later."""
    zone = _zone(schedule)
    local = datetime.fromtimestamp(held_at_ms / 1000, tz=UTC).astimezone(zone).replace(tzinfo=None)
    release = _ms((local + timedelta(days=schedule.reserve_hold_days)).replace(tzinfo=zone))
    assert release >= held_at_ms or schedule.reserve_hold_days == 0
    return release


def _half_even(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def allocate(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` in proportion to `weights` (their sum must be positive; a weight may be
    negative): each part half-even, the remainder on the largest weight, so the parts add up."""
    weight_sum = sum(weights.values())
    assert weights and weight_sum > 0, weights
    parts = {name: _half_even(Decimal(total) * weight / weight_sum) for name, weight in weights.items()}
    largest = max(sorted(weights), key=lambda name: weights[name])
    parts[largest] += total - sum(parts.values())
    assert sum(parts.values()) == total
    return parts


# The account families a settlement line is made of; sums of (debit - credit) per family.
ACTIVITY_FAMILIES = ("provider_clearing", "fees_expense", "platform_revenue", "partner_payable", "merchant_payable")


def activity_line(*, ledger_kind: str, reference: str, order_id: str | None, occurred_at_ms: int,
                  sums: dict[str, int], channel_account: str | None) -> Line:
    """A line from one ledger transaction in one currency, given the sums of (debit - credit) of its
    entries per account family (the store adds them up) and one of its provider_clearing or
    fees_expense accounts (which names the channel). amount = what moved at the provider
    (clearing + fees); commission, partner shares and the merchant's net are the credits (net of
    debits) of their accounts."""
    assert ledger_kind in _ACTIVITY_KINDS, ledger_kind
    channel = channel_account.split(":")[1] if channel_account is not None else None
    if ledger_kind == "chargeback_reversed":
        # a won dispute: a chargeback line of the opposite sign, under a reference of its own (a
        # line kind and reference are settled once, and the chargeback holds the refund's id)
        reference = f"{reference}:reversed"
    line = Line(kind=_ACTIVITY_KINDS[ledger_kind], reference=reference, order_id=order_id, channel=channel,
                amount=sums["provider_clearing"] + sums["fees_expense"], fee=sums["fees_expense"],
                commission=-sums["platform_revenue"], partner_shares=-sums["partner_payable"],
                net=-sums["merchant_payable"], occurred_at_ms=occurred_at_ms)
    if line.kind != "adjustment":
        # a capture or a reversal: what moved at the provider is shared out entirely
        assert line.amount == line.commission + line.partner_shares + line.net, line
    return line


def payment_gross_by_channel(lines: list[Line]) -> dict[str, int]:
    """The payments' gross per channel: what the rolling reserve is held on (a sum, so the lines
    of a period can be taken in chunks)."""
    gross_by_channel: dict[str, int] = {}
    for line in lines:
        if line.kind == "payment":
            channel = line.channel or UNASSIGNED_CHANNEL
            gross_by_channel[channel] = gross_by_channel.get(channel, 0) + line.amount
    return gross_by_channel


def reserve_hold_lines(*, settlement_id: str, gross_by_channel: dict[str, int], reserve_bps: int, at_ms: int) -> list[Line]:
    gross = sum(gross_by_channel.values())
    held = share(gross, reserve_bps) if gross > 0 else 0
    if held == 0:
        return []
    return [Line(kind="reserve_hold", reference=settlement_id, order_id=None, channel=channel, amount=0, fee=0,
                 commission=0, partner_shares=0, net=-part, occurred_at_ms=at_ms)
            for channel, part in sorted(allocate(held, gross_by_channel).items()) if part != 0]


def line_totals(lines: list[Line]) -> dict[str, int]:
    """The batch totals these lines make. Every total is a sum over lines: the totals of a batch
    built in chunks are the sums of its chunks' totals."""

    def total(kinds: tuple[str, ...], field: str) -> int:
        return sum(getattr(line, field) for line in lines if line.kind in kinds)

    everything = LINE_KINDS
    totals = {
        "gross": total(("payment",), "amount"), "refunds": -total(("refund",), "amount"),
        "chargebacks": -total(("chargeback",), "amount"), "fees": total(everything, "fee"),
        "commission": total(everything, "commission"), "partner_shares": total(everything, "partner_shares"),
        "reserve_held": -total(("reserve_hold",), "net"), "reserve_released": total(("reserve_release",), "net"),
        "carried_in": total(("carried",), "net"), "net_payable": total(everything, "net"),
    }
    sales = ("payment", "refund", "chargeback")
    assert total(sales, "net") == (totals["gross"] - totals["refunds"] - totals["chargebacks"]
                                   - total(sales, "commission") - total(sales, "partner_shares")), totals
    assert totals["net_payable"] == (total(sales + ("adjustment",), "net") - totals["reserve_held"]
                                     + totals["reserve_released"] + totals["carried_in"])
    return totals


def batch_status(*, net_payable: int, minimum_payout: int) -> Literal["pending", "carried"]:
    assert minimum_payout >= 0
    return "pending" if net_payable > 0 and net_payable >= minimum_payout else "carried"


def build_batch(*, settlement_id: str, activity: list[Line], released: list[Line], carried: list[Line],
                reserve_bps: int, minimum_payout: int, at_ms: int) -> Batch:
    """The batch of one currency: carried-in nets, released reserve, the period's activity and
    the reserve held on its gross; `carried` itself when the net payable is below the minimum."""
    assert all(line.kind == "reserve_release" for line in released) and all(line.kind == "carried" for line in carried)
    assert minimum_payout >= 0
    held = reserve_hold_lines(settlement_id=settlement_id, gross_by_channel=payment_gross_by_channel(activity),
                              reserve_bps=reserve_bps, at_ms=at_ms)
    lines = [*carried, *released, *activity, *held]
    batch_totals = line_totals(lines)
    status = batch_status(net_payable=batch_totals["net_payable"], minimum_payout=minimum_payout)
    return Batch(status=status, lines=lines, **batch_totals)


def payout_entries(*, merchant_id: str, currency: str, net_payable: int, channel_nets: dict[str | None, int]) -> list[Entry]:
    """Paying a batch out: Dr merchant_payable, Cr provider_clearing of each channel in proportion
    to the nets of the batch's lines on it (lines with no channel follow the same proportions).
    A channel whose lines net negative gets a debit: the merchant's balance there was negative."""
    assert net_payable > 0
    weights = {channel: net for channel, net in channel_nets.items() if channel is not None}
    if not weights or sum(weights.values()) <= 0:
        weights = {UNASSIGNED_CHANNEL: 1}
    entries = [Entry(account=f"merchant_payable:{merchant_id}", currency=currency, debit=net_payable)]
    for channel, part in sorted(allocate(net_payable, weights).items()):
        account = f"provider_clearing:{channel}:{merchant_id}"
        if part > 0:
            entries.append(Entry(account=account, currency=currency, credit=part))
        elif part < 0:
            entries.append(Entry(account=account, currency=currency, debit=-part))
    check_balanced(entries)
    return entries

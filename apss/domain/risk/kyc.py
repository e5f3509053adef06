"""AML cases, KYC statuses and minors' spending limits as pure rules (no I/O).

- An AML case moves open -> investigating -> reported | closed (open may also close or be
  reported at once); `reported` and `closed` are final. The table is data, `case_transition`
  refuses any other move.
- Minors' limits are bands per jurisdiction: `[min_age, max_age)` with a limit per payment and per
  calendar month (the jurisdiction's time zone), in one currency; `None` is no limit, 0 forbids
  paying at all. The built-in preset "CN" follows China's rules for online games (2019 notice of
  the National Press and Publication Administration): no payments under 8; 8 to under 16 at most
  50 CNY a payment and 200 CNY a month; 16 to under 18 at most 100 CNY and 400 CNY.
"""

from __future__ import annotations

import datetime as dt
import enum
from zoneinfo import ZoneInfo

import msgspec

from apss.errors import AmlCaseTransitionInvalid

__all__ = [
    "BUILTIN_PRESETS",
    "CASE_KINDS",
    "CASE_OPEN",
    "CASE_TRANSITIONS",
    "KYC_STATUSES",
    "CaseStatus",
    "MinorBand",
    "MinorPreset",
    "age_on",
    "band_for",
    "case_transition",
    "month_of",
    "near_below",
]

KYC_STATUSES = ("unverified", "pending", "verified", "rejected")
CASE_KINDS = ("daily_threshold", "rolling_30d_threshold", "structuring")


class CaseStatus(enum.StrEnum):
    OPEN = "open"
    INVESTIGATING = "investigating"
    REPORTED = "reported"
    CLOSED = "closed"


_C = CaseStatus
CASE_TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    _C.OPEN: frozenset({_C.INVESTIGATING, _C.REPORTED, _C.CLOSED}),
    _C.INVESTIGATING: frozenset({_C.REPORTED, _C.CLOSED}),
    _C.REPORTED: frozenset(),
    _C.CLOSED: frozenset(),
}
CASE_OPEN = (_C.OPEN.value, _C.INVESTIGATING.value)  # a player's hits append to a case in these


def case_transition(current: CaseStatus, wanted: CaseStatus) -> CaseStatus:
    """`wanted`, or AmlCaseTransitionInvalid (409): a move off the table is an error, never a no-op."""
    assert set(CASE_TRANSITIONS) == set(CaseStatus)
    if wanted not in CASE_TRANSITIONS[current]:
        raise AmlCaseTransitionInvalid(f"An AML case cannot move from '{current.value}' to '{wanted.value}'.",
                                       param="status")
    return wanted


def near_below(amount: int, *, threshold: int, margin_bps: int) -> bool:
    """Is `amount` just under `threshold`: within `margin_bps` below it (10% = 1000), never at it?"""
    assert threshold >= 0 and 0 < margin_bps <= 10_000, (threshold, margin_bps)
    floor = threshold - threshold * margin_bps // 10_000
    return threshold > 0 and floor <= amount < threshold


class MinorBand(msgspec.Struct, frozen=True, kw_only=True):
    min_age: int
    max_age: int  # exclusive: a band [8, 16) holds ages 8 to 15
    per_payment: int | None  # minor units of `currency`; None: no limit; 0: no payments
    per_month: int | None
    currency: str

    def __post_init__(self) -> None:
        assert 0 <= self.min_age < self.max_age <= 150, (self.min_age, self.max_age)
        assert self.per_payment is None or self.per_payment >= 0
        assert self.per_month is None or self.per_month >= 0


class MinorPreset(msgspec.Struct, frozen=True, kw_only=True):
    jurisdiction: str
    timezone: str  # an IANA zone: the calendar month and the birthday are reckoned in it
    bands: list[MinorBand]
    builtin: bool = False


BUILTIN_PRESETS: dict[str, MinorPreset] = {
    "CN": MinorPreset(jurisdiction="CN", timezone="Asia/Shanghai", builtin=True, bands=[
        MinorBand(min_age=0, max_age=8, per_payment=0, per_month=0, currency="CNY"),
        MinorBand(min_age=8, max_age=16, per_payment=5_000, per_month=20_000, currency="CNY"),
        MinorBand(min_age=16, max_age=18, per_payment=10_000, per_month=40_000, currency="CNY"),
    ]),
}


def band_for(preset: MinorPreset, age: int) -> MinorBand | None:
    """The band holding `age` (bands do not overlap: checked when a preset is saved)."""
    assert age >= 0, age
    found = [b for b in preset.bands if b.min_age <= age < b.max_age]
    assert len(found) <= 1, found
    return found[0] if found else None


def _local(now_ms: int, timezone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).astimezone(ZoneInfo(timezone))


def age_on(birth_date: str, *, now_ms: int, timezone: str) -> int:
    """Whole years from `birth_date` (YYYY-MM-DD) to today in `timezone` (29 February birthdays
    come on 1 March in other years)."""
    born = dt.date.fromisoformat(birth_date)
    today = _local(now_ms, timezone).date()
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    assert years >= -1, (birth_date, today)
    return max(0, years)


def month_of(now_ms: int, *, timezone: str) -> str:
    """The calendar month (YYYY-MM) `now_ms` falls in, in `timezone`."""
    local = _local(now_ms, timezone)
    return f"{local.year:04d}-{local.month:02d}"

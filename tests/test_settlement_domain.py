"""Settlement rules without I/O: cut-offs across DST changes, catch-up over a gap, T+N periods,
the rolling reserve's release date, the payout split, and a batch's totals."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from apss.clock import format_rfc3339, parse_rfc3339
from apss.domain.ledger import Split, capture_entries, check_balanced, reversal_entries
from apss.domain.settlement import (
    ACTIVITY_FAMILIES,
    Line,
    Schedule,
    activity_end_ms,
    activity_line,
    allocate,
    build_batch,
    cutoff_on,
    cutoffs_between,
    local_date,
    payout_entries,
    reserve_release_at_ms,
)

NY = "America/New_York"
ZONES = ["UTC", NY, "Europe/Berlin", "Asia/Shanghai", "Australia/Lord_Howe", "America/St_Johns", "Asia/Kathmandu",
         "Pacific/Apia", "Europe/London"]
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _times(schedule: Schedule, start: str, end: str) -> list[str]:
    found = cutoffs_between(schedule, after_ms=parse_rfc3339(start), until_ms=parse_rfc3339(end), count_max=1000)
    return [format_rfc3339(ms) for ms in found]


def test_new_york_spring_forward_a_cutoff_in_the_gap_falls_after_it():
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day
    daily = Schedule(cycle="daily", cutoff_time="02:30", timezone=NY)
    assert _times(daily, "2026-03-06T12:00:00Z", "2026-03-10T12:00:00Z") == [
        "2026-03-07T07:30:00Z",  # 02:30 EST
        "2026-03-08T07:30:00Z",  # 03:30 EDT: when the wall clock passed 02:30
        "2026-03-09T06:30:00Z",  # 02:30 EDT
        "2026-03-10T06:30:00Z"]
    midnight = Schedule(cycle="daily", cutoff_time="00:00", timezone=NY)
    assert _times(midnight, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z") == [
        "2026-03-07T05:00:00Z", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"]  # a 23-hour day between


def test_new_york_fall_back_an_ambiguous_cutoff_happens_once_at_its_first_occurrence():
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice
    daily = Schedule(cycle="daily", cutoff_time="01:30", timezone=NY)
    assert _times(daily, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z") == [
        "2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]  # a 25-hour day between


def test_weekly_cutoffs_fall_on_the_weekday_in_local_time():
    # Monday 00:30 in Shanghai is Sunday 16:30 UTC
    weekly = Schedule(cycle="weekly", weekday=0, cutoff_time="00:30", timezone="Asia/Shanghai")
    times = _times(weekly, "2026-03-01T00:00:00Z", "2026-03-31T00:00:00Z")
    assert times == ["2026-03-01T16:30:00Z", "2026-03-08T16:30:00Z", "2026-03-15T16:30:00Z", "2026-03-22T16:30:00Z",
                     "2026-03-29T16:30:00Z"]
    # across New York's DST change the UTC time moves, the local time does not
    friday = Schedule(cycle="weekly", weekday=4, cutoff_time="17:00", timezone=NY)
    assert _times(friday, "2026-03-01T00:00:00Z", "2026-03-14T00:00:00Z") == ["2026-03-06T22:00:00Z", "2026-03-13T21:00:00Z"]


def test_manual_has_no_cutoffs_and_bounds_are_exclusive_then_inclusive():
    assert _times(Schedule(cycle="manual"), "2026-01-01T00:00:00Z", "2026-12-31T00:00:00Z") == []
    daily = Schedule(cycle="daily", cutoff_time="00:00", timezone="UTC")
    assert _times(daily, "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z") == ["2026-03-03T00:00:00Z"]
    assert _times(daily, "2026-03-02T00:00:00Z", "2026-03-02T23:59:59Z") == []


def test_t_plus_covers_the_activity_of_n_local_days_before():
    t_plus = Schedule(cycle="t_plus", t_plus_days=2, cutoff_time="00:00", timezone=NY)
    cutoff = parse_rfc3339("2026-03-10T04:00:00Z")  # Mar 10 00:00 EDT
    assert format_rfc3339(activity_end_ms(t_plus, cutoff)) == "2026-03-08T05:00:00Z"  # Mar 8 00:00 EST
    assert activity_end_ms(Schedule(cycle="daily"), cutoff) == cutoff


def test_reserve_is_released_at_the_same_wall_clock_time_hold_days_later():
    schedule = Schedule(cycle="daily", cutoff_time="02:30", timezone=NY, reserve_bps=1000, reserve_hold_days=2)
    held = parse_rfc3339("2026-03-07T07:30:00Z")  # 02:30 EST
    assert format_rfc3339(reserve_release_at_ms(schedule, held)) == "2026-03-09T06:30:00Z"  # 02:30 EDT, 47 h later
    release = reserve_release_at_ms(schedule, held)
    assert release in cutoffs_between(schedule, after_ms=held, until_ms=release, count_max=5)


@settings(max_examples=150, deadline=None)
@given(zone=st.sampled_from(ZONES), hour=st.integers(0, 23), minute=st.sampled_from([0, 15, 30, 45, 59]),
       weekly=st.booleans(), weekday=st.integers(0, 6),
       start_s=st.integers(parse_rfc3339("2024-01-01T00:00:00Z") // 1000, parse_rfc3339("2030-01-01T00:00:00Z") // 1000),
       gap_h=st.integers(0, 24 * 60), pieces=st.lists(st.integers(1, 5), min_size=1, max_size=40))
def test_catch_up_over_a_gap_produces_every_cutoff_once_in_order(zone, hour, minute, weekly, weekday, start_s, gap_h,
                                                                 pieces):
    schedule = Schedule(cycle="weekly" if weekly else "daily", weekday=weekday if weekly else None,
                        cutoff_time=f"{hour:02d}:{minute:02d}", timezone=zone)
    after, until = start_s * 1000, start_s * 1000 + gap_h * HOUR_MS
    at_once = cutoffs_between(schedule, after_ms=after, until_ms=until, count_max=10_000)
    # what a job does after a downtime: a few cut-offs per run, from the marker on
    marker, caught_up = after, []
    for count_max in pieces * 1000:
        step = cutoffs_between(schedule, after_ms=marker, until_ms=until, count_max=count_max)
        if not step:
            break
        caught_up += step
        marker = step[-1]
    assert caught_up == at_once
    assert all(after < c <= until for c in at_once) and at_once == sorted(set(at_once))
    # one cut-off per local day (per week when weekly), on the right day, 23 to 25 hours apart (or a week)
    days = [local_date(schedule, c) for c in at_once]
    assert len(set(days)) == len(days)
    if weekly:
        assert all(d.weekday() == weekday for d in days)
    spacing = 7 * DAY_MS if weekly else DAY_MS
    assert all(spacing - 2 * HOUR_MS <= b - a <= spacing + 2 * HOUR_MS for a, b in itertools.pairwise(at_once))
    # and none is missing: every local day (of the weekday) whose cut-off is in the window is there
    first_day, last_day = local_date(schedule, after) - timedelta(days=1), local_date(schedule, until) + timedelta(days=1)
    expected = [cutoff_on(schedule, first_day + timedelta(days=n)) for n in range((last_day - first_day).days + 1)
                if not weekly or (first_day + timedelta(days=n)).weekday() == weekday]
    assert at_once == [c for c in expected if after < c <= until]


@settings(max_examples=200, deadline=None)
@given(total=st.integers(-10**9, 10**9), weights=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                                                                 st.integers(-1000, 10**6), min_size=1))
def test_allocate_adds_up_to_the_whole(total, weights):
    if sum(weights.values()) <= 0:
        return
    parts = allocate(total, weights)
    assert set(parts) == set(weights) and sum(parts.values()) == total


def test_allocate_rounds_half_even_and_puts_the_remainder_on_the_largest():
    assert allocate(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert allocate(5, {"x": 1, "y": 1}) == {"x": 3, "y": 2}  # 2.5 -> 2 each, remainder on the first largest
    assert allocate(900, {"stripe": -100, "sandbox": 1000}) == {"stripe": -100, "sandbox": 1000}


def test_payout_entries_balance_and_split_by_channel():
    entries = payout_entries(merchant_id="m", currency="USD", net_payable=1000,
                             channel_nets={"sandbox": 600, "stripe": 300, None: 100})
    check_balanced(entries)
    credits = {e.account: e.credit for e in entries if e.credit}
    assert credits == {"provider_clearing:sandbox:m": 667, "provider_clearing:stripe:m": 333}
    negative = payout_entries(merchant_id="m", currency="USD", net_payable=900, channel_nets={"sandbox": 1000, "stripe": -100})
    assert {(e.account, e.debit, e.credit) for e in negative} == {
        ("merchant_payable:m", 900, 0), ("provider_clearing:sandbox:m", 0, 1000), ("provider_clearing:stripe:m", 100, 0)}
    only_adjustments = payout_entries(merchant_id="m", currency="USD", net_payable=50, channel_nets={None: 50})
    assert {e.account for e in only_adjustments} == {"merchant_payable:m", "provider_clearing:unassigned:m"}


def _lines_of_a_payment_and_refund() -> list[Line]:
    splits = [Split(recipient="pub", share_bps=1500)]
    capture = capture_entries(merchant_id="m", channel="sandbox", gross=1999, fee=88, currency="USD", commission_bps=2000,
                              splits=splits)
    refund = reversal_entries(merchant_id="m", channel="sandbox", gross=1999, refunded_before=0, amount=500,
                              currency="USD", commission_bps=2000, splits=splits)

    def line(ledger_kind: str, reference: str, occurred_at_ms: int, entries) -> Line:
        # what the store's activity query adds up: (debit - credit) per account family
        sums = dict.fromkeys(ACTIVITY_FAMILIES, 0)
        for entry in entries:
            family = entry.account.split(":", 1)[0]
            if family in sums:
                sums[family] += entry.debit - entry.credit
        channel_account = next(e.account for e in entries if e.account.startswith("provider_clearing:"))
        return activity_line(ledger_kind=ledger_kind, reference=reference, order_id="ord_1",
                             occurred_at_ms=occurred_at_ms, sums=sums, channel_account=channel_account)

    return [line("payment_captured", "pay_1", 1, capture), line("refund", "rfd_1", 2, refund)]


def test_lines_come_from_the_ledger_entries():
    payment, refund = _lines_of_a_payment_and_refund()
    assert (payment.kind, payment.channel, payment.amount, payment.fee, payment.commission, payment.partner_shares,
            payment.net) == ("payment", "sandbox", 1999, 88, 400, 300, 1299)
    assert (refund.kind, refund.amount, refund.fee, refund.commission, refund.partner_shares, refund.net) == (
        "refund", -500, 0, -100, -75, -325)


def test_a_batch_holds_the_reserve_and_is_carried_below_the_minimum():
    activity = _lines_of_a_payment_and_refund()
    batch = build_batch(settlement_id="stl_1", activity=activity, released=[], carried=[], reserve_bps=1000,
                        minimum_payout=0, at_ms=10)
    assert (batch.status, batch.gross, batch.refunds, batch.commission, batch.partner_shares) == ("pending", 1999, 500, 300, 225)
    assert batch.reserve_held == 200 and batch.net_payable == 1299 - 325 - 200 == sum(x.net for x in batch.lines)
    assert batch.lines[-1].kind == "reserve_hold" and batch.lines[-1].reference == "stl_1"
    below = build_batch(settlement_id="stl_2", activity=activity, released=[], carried=[], reserve_bps=0,
                        minimum_payout=1000, at_ms=10)
    assert (below.status, below.net_payable) == ("carried", 974)
    refunds_only = build_batch(settlement_id="stl_3", activity=activity[1:], released=[], carried=[], reserve_bps=1000,
                               minimum_payout=0, at_ms=10)
    assert (refunds_only.status, refunds_only.net_payable, refunds_only.reserve_held) == ("carried", -325, 0)


def test_local_date_and_cutoff_on_agree():
    schedule = Schedule(cycle="daily", cutoff_time="23:59", timezone="Pacific/Apia")
    cutoff = cutoff_on(schedule, date(2026, 6, 1))
    assert local_date(schedule, cutoff) == date(2026, 6, 1)
    local = datetime.fromtimestamp(cutoff / 1000, tz=UTC).astimezone(ZoneInfo("Pacific/Apia"))
    assert (local.hour, local.minute) == (23, 59)

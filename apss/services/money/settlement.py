"""Settlement: each merchant's cycle, the batches made at its cut-offs from the ledger, payouts.

The scheduler's `run_due` settles, for every merchant with a daily, weekly or T+N schedule, every
cut-off after the last one settled up to now, in order: after a downtime it catches up on each
missed cycle, each with its own period. A cut-off is settled in chunks, one write transaction of
at most `database.chunk_rows_max` ledger transactions each (no other write waits long behind it):
each chunk appends lines to one batch per currency being built (`complete = 0`: invisible to the
API and to payout) and moves the run's cursor on the schedule; the last chunk adds the reserve
held, sets each batch's status, makes them complete and advances the schedule's markers (the
rules are in apss/domain/settlement.py: every total is a sum over lines, so chunks add up to the
single pass). A run cut off by a crash goes on from its cursor; running it twice creates nothing
twice (the markers, and UNIQUE (merchant, currency, period end)). The schedule cannot change
while a cut-off is being settled (409 settlement_in_progress).

Markers: `last_cutoff_at_ms` is the last cut-off settled; `settled_through_ms` the end of the
activity settled so far. A batch covers [settled_through, period end): periods follow each other
without gap or overlap even when the merchant changes its cycle. A change of cycle, weekday,
cut-off time, time zone or T+N days starts the new timing from now: cut-offs of the old timing
not settled yet (the job runs every minute) are not made, their activity goes into the next batch.

Activity at the cut-off belongs to the next period. A ledger transaction posted while a cut-off
is being settled cannot slip behind it: both run on the one writer thread, and a transaction that
runs after the settlement reads a clock already past the cut-off.

A merchant without a schedule is on the manual cycle. `settle_now` (manual cycle only) settles
everything up to now. `mark_paid` (admin) moves a pending batch to paid and posts the payout:
Dr merchant_payable, Cr provider_clearing per channel in proportion to the lines' nets.
"""

from __future__ import annotations

import csv
import io
import logging
from functools import partial
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from apss.clock import Clock, format_rfc3339
from apss.domain.money import is_iso_currency
from apss.domain.settlement import (
    ACTIVITY_FAMILIES,
    Line,
    Schedule,
    activity_end_ms,
    activity_line,
    batch_status,
    cutoffs_between,
    is_time_zone,
    line_totals,
    payment_gross_by_channel,
    payout_entries,
    reserve_hold_lines,
    reserve_release_at_ms,
)
from apss.errors import (
    ApssError,
    Conflict,
    CurrencyNotSupported,
    InvalidRequest,
    InvalidTransition,
    MerchantKycRequired,
    NotFound,
    NotReady,
)
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.money.ledger import Ledger
from apss.services.notify.outbox import Outbox
from apss.services.paging import page_of
from apss.services.views import encode
from apss.store import settlement as store
from apss.store.db import Database, Row, Tx

__all__ = [
    "LineView",
    "PayoutIn",
    "ScheduleIn",
    "ScheduleView",
    "SettlementDetailView",
    "SettlementList",
    "SettlementView",
    "Settlements",
]

log = logging.getLogger("apss.settlement")

# Cut-offs settled per merchant in one run (a year of daily cycles and then some); the next run
# goes on where this one stopped.
CATCH_UP_CUTOFFS_MAX = 400
SCHEDULES_MAX = 100_000
# Chunks of one cut-off in one run (a billion ledger transactions at the default chunk size).
CHUNKS_PER_CUTOFF_MAX = 1_000_000
_TIMING_FIELDS = ("cycle", "weekday", "t_plus_days", "cutoff_time", "timezone")
_CSV_HEADER = ("settlement_id", "line", "kind", "reference", "order_id", "channel", "currency", "amount", "fee",
               "commission", "partner_shares", "net", "occurred_at")
_minimum_decoder = msgspec.json.Decoder(dict[str, int])
_gross_decoder = msgspec.json.Decoder(dict[str, int])

Amount = Annotated[int, Meta(ge=0, le=10**15)]


class ScheduleIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole schedule (PUT replaces it)."""

    cycle: Literal["daily", "weekly", "t_plus", "manual"]
    weekday: Annotated[int, Meta(ge=0, le=6, description="weekly only: 0 = Monday")] | None = None
    t_plus_days: Annotated[int, Meta(ge=0, le=365, description="t_plus only: days between activity and its batch")] = 0
    cutoff_time: Annotated[str, Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, local")] = "00:00"
    timezone: Annotated[str, Meta(min_length=1, max_length=64, description="IANA name, e.g. Asia/Shanghai")] = "UTC"
    minimum_payout: Annotated[dict[str, Amount], Meta(max_length=64)] = {}
    reserve_bps: Annotated[int, Meta(ge=0, le=10_000)] = 0
    reserve_hold_days: Annotated[int, Meta(ge=0, le=3650)] = 0


class ScheduleView(msgspec.Struct, frozen=True, kw_only=True):
    cycle: str
    weekday: int | None
    t_plus_days: int
    cutoff_time: str
    timezone: str
    minimum_payout: dict[str, int]
    reserve_bps: int
    reserve_hold_days: int
    last_cutoff_at: str | None
    next_cutoff_at: str | None
    updated_at: str | None


class PayoutIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    payout_reference: Annotated[str, Meta(min_length=1, max_length=200)]


class LineView(msgspec.Struct, frozen=True, kw_only=True):
    line: int
    kind: str
    reference: str
    order_id: str | None
    channel: str | None
    amount: int
    fee: int
    commission: int
    partner_shares: int
    net: int
    occurred_at: str


class SettlementView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    currency: str
    status: Literal["pending", "paid", "carried"]
    period_start: str
    period_end: str
    cutoff_at: str
    gross: int
    refunds: int
    chargebacks: int
    fees: int
    commission: int
    partner_shares: int
    reserve_held: int
    reserve_release_at: str | None
    reserve_released: int
    carried_in: int
    net_payable: int
    carried_into: str | None
    payout_reference: str | None
    paid_at: str | None
    # paid | carried | payable (pending, the admin may pay it) | awaiting_merchant_kyc (pending,
    # the merchant's KYC is not verified: the payout waits)
    payout_state: Literal["paid", "carried", "payable", "awaiting_merchant_kyc"]
    created_at: str


class SettlementDetailView(SettlementView, frozen=True, kw_only=True):
    lines: list[LineView]


class SettlementList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[SettlementView]
    has_more: bool
    next_cursor: str | None


def _optional_time(ms: int | None) -> str | None:
    return format_rfc3339(ms) if ms is not None else None


def _schedule(row: Row) -> Schedule:
    return Schedule(cycle=row["cycle"], cutoff_time=row["cutoff_time"], timezone=row["timezone"], weekday=row["weekday"],
                    t_plus_days=row["t_plus_days"], minimum_payout=_minimum_decoder.decode(row["minimum_payout"]),
                    reserve_bps=row["reserve_bps"], reserve_hold_days=row["reserve_hold_days"])


def _settlement_fields(row: Row) -> dict:
    return {
        "id": row["id"], "currency": row["currency"], "status": row["status"], "period_start": format_rfc3339(row["period_start_ms"]),
        "period_end": format_rfc3339(row["period_end_ms"]), "cutoff_at": format_rfc3339(row["cutoff_at_ms"]),
        "gross": row["gross"], "refunds": row["refunds"], "chargebacks": row["chargebacks"], "fees": row["fees"],
        "commission": row["commission"], "partner_shares": row["partner_shares"], "reserve_held": row["reserve_held"],
        "reserve_release_at": _optional_time(row["reserve_release_at_ms"]), "reserve_released": row["reserve_released"],
        "carried_in": row["carried_in"], "net_payable": row["net_payable"], "carried_into": row["carried_into"],
        "payout_reference": row["payout_reference"], "paid_at": _optional_time(row["paid_at_ms"]),
        "payout_state": _payout_state(row), "created_at": format_rfc3339(row["created_at_ms"]),
    }


def _payout_state(row: Row) -> str:
    if row["status"] != "pending":
        return row["status"]
    return "payable" if row["merchant_kyc_status"] == "verified" else "awaiting_merchant_kyc"


def _line_view(row: Row) -> LineView:
    return LineView(line=row["line"], kind=row["kind"], reference=row["reference"], order_id=row["order_id"],
                    channel=row["channel"], amount=row["amount"], fee=row["fee"], commission=row["commission"],
                    partner_shares=row["partner_shares"], net=row["net"], occurred_at=format_rfc3339(row["occurred_at_ms"]))


def _detail(row: Row, lines: list[Row]) -> SettlementDetailView:
    assert sum(line["net"] for line in lines) == row["net_payable"], f"settlement {row['id']}: lines differ from its total"
    return SettlementDetailView(**_settlement_fields(row), lines=[_line_view(line) for line in lines])


def _validated(command: ScheduleIn) -> Schedule:
    if command.cycle == "weekly" and command.weekday is None:
        raise InvalidRequest("A weekly cycle names its weekday (0 = Monday).", code="weekday_required", param="weekday")
    if command.cycle != "weekly" and command.weekday is not None:
        raise InvalidRequest("Only a weekly cycle has a weekday.", code="weekday_only_for_weekly", param="weekday")
    if command.cycle == "t_plus" and command.t_plus_days < 1:
        raise InvalidRequest("A T+N cycle needs t_plus_days of 1 or more.", code="t_plus_days_required", param="t_plus_days")
    if command.cycle != "t_plus" and command.t_plus_days != 0:
        raise InvalidRequest("Only a t_plus cycle has t_plus_days.", code="t_plus_days_only_for_t_plus", param="t_plus_days")
    if not is_time_zone(command.timezone):
        raise InvalidRequest(f"'{command.timezone}' is not an IANA time zone.", code="timezone_unknown", param="timezone")
    for code in command.minimum_payout:
        if not is_iso_currency(code):
            raise CurrencyNotSupported(f"'{code}' is not a supported currency.", param=f"minimum_payout.{code}")
    if command.reserve_bps > 0 and command.reserve_hold_days < 1:
        raise InvalidRequest("A rolling reserve is held for 1 day or more.", code="reserve_hold_days_required",
                             param="reserve_hold_days")
    return Schedule(cycle=command.cycle, cutoff_time=command.cutoff_time, timezone=command.timezone,
                    weekday=command.weekday, t_plus_days=command.t_plus_days, minimum_payout=dict(command.minimum_payout),
                    reserve_bps=command.reserve_bps, reserve_hold_days=command.reserve_hold_days)


class _ManualRun(msgspec.Struct, frozen=True, kw_only=True):
    """Where a manual run stands: its cut-off, and the batches it made once its last chunk committed."""

    cutoff_ms: int
    made: list[str] | None


class Settlements:
    def __init__(self, *, db: Database, clock: Clock, ledger: Ledger, idempotency: Idempotency,
                 outbox: Outbox | None = None, chunk_rows_max: int = 1000) -> None:
        assert chunk_rows_max >= 1
        self._db = db
        self._chunk_rows_max = chunk_rows_max
        self._clock = clock
        self._ledger = ledger
        self._idempotency = idempotency
        # With the outbox, each batch made emits `settlement.created` (rendered as SettlementView).
        self._emits = outbox is not None
        if outbox is not None:
            outbox.register("settlement", self._render)

    @staticmethod
    def _render(tx: Tx, settlement_id: str) -> SettlementView:
        return SettlementView(**_settlement_fields(store.get_settlement_tx(tx, settlement_id=settlement_id)))

    # -- schedule ------------------------------------------------------------------------------
    def _view(self, schedule: Schedule, row: Row | None) -> ScheduleView:
        last_ms = row["last_cutoff_at_ms"] if row else None
        upcoming = cutoffs_between(schedule, after_ms=max(last_ms or 0, self._clock.now_ms()),
                                   until_ms=self._clock.now_ms() + 400 * 86_400_000, count_max=1)
        return ScheduleView(cycle=schedule.cycle, weekday=schedule.weekday, t_plus_days=schedule.t_plus_days,
                            cutoff_time=schedule.cutoff_time, timezone=schedule.timezone,
                            minimum_payout=dict(schedule.minimum_payout), reserve_bps=schedule.reserve_bps,
                            reserve_hold_days=schedule.reserve_hold_days, last_cutoff_at=_optional_time(last_ms),
                            next_cutoff_at=_optional_time(upcoming[0] if upcoming else None),
                            updated_at=_optional_time(row["updated_at_ms"] if row else None))

    async def get_schedule(self, merchant_id: str) -> ScheduleView:
        row = await store.fetch_schedule(self._db, merchant_id=merchant_id)
        return self._view(_schedule(row) if row else Schedule(cycle="manual"), row)

    async def set_schedule(self, merchant_id: str, command: ScheduleIn) -> ScheduleView:
        schedule = _validated(command)

        def transaction(tx: Tx) -> ScheduleView:
            now_ms = self._clock.now_ms()
            current = store.get_schedule_tx(tx, merchant_id=merchant_id)
            if current is None:
                # Nothing settled yet: the first batch takes everything since the merchant began.
                created_at_ms = store.merchant_created_at_ms(tx, merchant_id=merchant_id)
                assert created_at_ms is not None, merchant_id
                last_ms, through_ms = now_ms, min(created_at_ms, now_ms)
            elif current["settling_cutoff_at_ms"] is not None:
                raise Conflict("A settlement of this merchant is being made; change the schedule once it is done.",
                               code="settlement_in_progress")
            else:
                retimed = any(current[name] != getattr(schedule, name) for name in _TIMING_FIELDS)
                last_ms = max(current["last_cutoff_at_ms"], now_ms) if retimed else current["last_cutoff_at_ms"]
                through_ms = current["settled_through_ms"]
            store.upsert_schedule(tx, merchant_id=merchant_id, fields={
                "cycle": schedule.cycle, "weekday": schedule.weekday, "t_plus_days": schedule.t_plus_days,
                "cutoff_time": schedule.cutoff_time, "timezone": schedule.timezone,
                "minimum_payout": msgspec.json.encode(schedule.minimum_payout).decode(), "reserve_bps": schedule.reserve_bps,
                "reserve_hold_days": schedule.reserve_hold_days, "last_cutoff_at_ms": last_ms,
                "settled_through_ms": through_ms, "updated_at_ms": now_ms})
            return self._view(schedule, store.get_schedule_tx(tx, merchant_id=merchant_id))

        return await self._db.write(transaction)

    # -- settling --------------------------------------------------------------------------------
    async def run_due(self) -> int:
        """The scheduler job: settle every due cut-off of every scheduled merchant, in order, each
        in chunks of at most chunk_rows_max ledger transactions per write. Returns the batches made."""
        now_ms = self._clock.now_ms()
        made = 0
        for row in await store.scheduled_merchants(self._db, limit=SCHEDULES_MAX):
            # A cut-off that a crash left half-settled is the first one after the markers: it goes on.
            cutoffs = cutoffs_between(_schedule(row), after_ms=row["last_cutoff_at_ms"], until_ms=now_ms,
                                      count_max=CATCH_UP_CUTOFFS_MAX)
            try:
                for cutoff_ms in cutoffs:
                    made += len(await self._in_chunks(merchant_id=row["merchant_id"], cutoff_ms=cutoff_ms))
            except ApssError:
                # e.g. the store is unavailable: the other merchants still settle; this one goes
                # on from its marker (and its chunk cursor) at the next run.
                log.exception("settlement of %s stopped before its cut-off; it goes on at the next run", row["merchant_id"])
        return made

    async def _in_chunks(self, *, merchant_id: str, cutoff_ms: int) -> list[str]:
        """One cut-off, one write per chunk, until its last chunk committed."""
        for _ in range(CHUNKS_PER_CUTOFF_MAX):
            made = await self._db.write(partial(self._settle_due, merchant_id=merchant_id, cutoff_ms=cutoff_ms))
            if made is not None:
                return made
        log.warning("settlement of %s at %d is not done after %d chunks; it goes on at the next run", merchant_id,
                    cutoff_ms, CHUNKS_PER_CUTOFF_MAX)
        return []

    def _settle_due(self, tx: Tx, *, merchant_id: str, cutoff_ms: int) -> list[str] | None:
        row = store.get_schedule_tx(tx, merchant_id=merchant_id)
        if row is None or row["cycle"] == "manual":
            return []
        schedule = _schedule(row)
        # Settled already (a run that overlapped this one), or the schedule changed meanwhile.
        if cutoffs_between(schedule, after_ms=row["last_cutoff_at_ms"], until_ms=cutoff_ms, count_max=1) != [cutoff_ms]:
            return []
        return self._settle_chunk(tx, row=row, schedule=schedule, cutoff_ms=cutoff_ms)

    async def settle_now(self, *, merchant_id: str, idem: IdempotencyRequest | None) -> Outcome:
        """Manual cycle: settle everything up to now (one batch per currency with activity), in
        chunks like the job. The first chunk's transaction holds the Idempotency-Key `running`
        (a replay or a concurrent retry never starts a second run); the last transaction stores
        the answer. A crash between them is finished by `resume` (at start, or by the completer)."""
        now_ms = self._clock.now_ms()

        def first(tx: Tx) -> _ManualRun:
            row = self._manual_schedule(tx, merchant_id=merchant_id, now_ms=now_ms)
            cutoff_ms = row["settling_cutoff_at_ms"] or now_ms  # a run a crash cut goes on first
            if cutoff_ms <= row["last_cutoff_at_ms"]:
                return _ManualRun(cutoff_ms=cutoff_ms, made=[])
            return _ManualRun(cutoff_ms=cutoff_ms, made=self._settle_chunk(tx, row=row, schedule=_schedule(row),
                                                                           cutoff_ms=cutoff_ms))

        started = await self._db.write(lambda tx: self._idempotency.begin(
            tx, merchant_id=merchant_id, request=idem, fn=first, resume=lambda _: f"settlement:{merchant_id}"))
        if isinstance(started, Outcome):  # a replay, or a refusal stored as the key's answer
            return started
        return await self._finish_manual(merchant_id=merchant_id, run=started, idem_key=idem.key if idem else None)

    async def resume(self, *, merchant_id: str, idem_key: str) -> Outcome:
        """Finish a manual run whose request stopped between its chunks: the remaining chunks of
        the cut-off being settled, then the key's answer (the batches of that cut-off)."""

        def point(tx: Tx) -> _ManualRun:
            row = store.get_schedule_tx(tx, merchant_id=merchant_id)
            if row["settling_cutoff_at_ms"] is not None:
                return _ManualRun(cutoff_ms=row["settling_cutoff_at_ms"], made=None)
            cutoff_ms = row["last_cutoff_at_ms"]
            return _ManualRun(cutoff_ms=cutoff_ms, made=store.made_at_cutoff(tx, merchant_id=merchant_id, cutoff_ms=cutoff_ms))

        return await self._finish_manual(merchant_id=merchant_id, run=await self._db.write(point), idem_key=idem_key)

    def _manual_schedule(self, tx: Tx, *, merchant_id: str, now_ms: int) -> Row:
        row = store.get_schedule_tx(tx, merchant_id=merchant_id)
        if row is not None and row["cycle"] != "manual":
            raise Conflict(f"The merchant settles on its {row['cycle']} cycle; settling on demand is for the manual"
                           " cycle.", code="settlement_cycle_not_manual")
        if row is None:
            created_at_ms = store.merchant_created_at_ms(tx, merchant_id=merchant_id)
            if created_at_ms is None:
                raise NotFound(f"No such merchant: '{merchant_id}'")
            store.upsert_schedule(tx, merchant_id=merchant_id, fields={
                "cycle": "manual", "weekday": None, "t_plus_days": 0, "cutoff_time": "00:00", "timezone": "UTC",
                "minimum_payout": "{}", "reserve_bps": 0, "reserve_hold_days": 0, "last_cutoff_at_ms": created_at_ms,
                "settled_through_ms": min(created_at_ms, now_ms), "updated_at_ms": now_ms})
            row = store.get_schedule_tx(tx, merchant_id=merchant_id)
        return row

    async def _finish_manual(self, *, merchant_id: str, run: _ManualRun, idem_key: str | None) -> Outcome:
        made = run.made
        for _ in range(CHUNKS_PER_CUTOFF_MAX):
            if made is not None:
                break
            made = await self._db.write(partial(self._manual_chunk, merchant_id=merchant_id, cutoff_ms=run.cutoff_ms))
        if made is None:
            raise NotReady("The settlement run is not done yet; retry the request to go on.")

        def last(tx: Tx) -> Outcome:
            if idem_key is not None:
                finished = self._idempotency.finished(tx, merchant_id=merchant_id, key=idem_key)
                if finished is not None:  # the completer answered it meanwhile
                    return finished
            listing = SettlementList(data=[self._render(tx, settlement_id) for settlement_id in made], has_more=False,
                                     next_cursor=None)
            outcome = Outcome(status=200, body=encode(listing))
            if idem_key is not None:
                self._idempotency.finish(tx, merchant_id=merchant_id, key=idem_key, outcome=outcome)
            return outcome

        return await self._db.write(last)

    def _manual_chunk(self, tx: Tx, *, merchant_id: str, cutoff_ms: int) -> list[str] | None:
        row = store.get_schedule_tx(tx, merchant_id=merchant_id)
        if row["settling_cutoff_at_ms"] != cutoff_ms:  # another request finished this cut-off meanwhile
            return store.made_at_cutoff(tx, merchant_id=merchant_id, cutoff_ms=cutoff_ms)
        return self._settle_chunk(tx, row=row, schedule=_schedule(row), cutoff_ms=cutoff_ms)

    def _settle_chunk(self, tx: Tx, *, row: Row, schedule: Schedule, cutoff_ms: int) -> list[str] | None:
        """One chunk of one merchant's cut-off: its next chunk_rows_max ledger transactions added to
        the batches being built (invisible until complete); the last chunk completes them and moves
        the markers. Returns the batch ids once the cut-off is settled, None while chunks remain."""
        merchant_id = row["merchant_id"]
        assert cutoff_ms > row["last_cutoff_at_ms"]
        start_ms, end_ms = row["settled_through_ms"], activity_end_ms(schedule, cutoff_ms)
        if row["settling_cutoff_at_ms"] is None:
            store.begin_settling(tx, merchant_id=merchant_id, cutoff_ms=cutoff_ms, after_ms=start_ms)
            after_ms, after_id = start_ms, ""
        else:
            assert row["settling_cutoff_at_ms"] == cutoff_ms, (row["settling_cutoff_at_ms"], cutoff_ms)
            after_ms, after_id = row["settling_after_ms"], row["settling_after_id"]
        made: list[str] = []
        if end_ms > start_ms:  # empty after a change to a longer T+N: the next cut-off goes on
            entries = store.activity_chunk(tx, merchant_id=merchant_id, from_ms=start_ms, to_ms=end_ms, after_ms=after_ms,
                                           after_id=after_id, limit=self._chunk_rows_max)
            activity, taken = self._activity(entries, start_ms=start_ms, end_ms=end_ms)
            for currency in sorted(activity):
                self._add_lines(tx, self._draft(tx, merchant_id=merchant_id, currency=currency, start_ms=start_ms,
                                                end_ms=end_ms, cutoff_ms=cutoff_ms), activity[currency])
            if len(taken) == self._chunk_rows_max:  # maybe more: the next chunk goes on after the last taken
                last = taken[-1]
                store.move_settling_cursor(tx, merchant_id=merchant_id, cutoff_ms=cutoff_ms, after_ms=last[0],
                                           after_id=last[1])
                return None
            made = self._complete(tx, merchant_id=merchant_id, schedule=schedule, start_ms=start_ms, end_ms=end_ms,
                                  cutoff_ms=cutoff_ms)
        store.advance_markers(tx, merchant_id=merchant_id, last_cutoff_at_ms=cutoff_ms,
                              settled_through_ms=max(start_ms, end_ms))
        return made

    def _draft(self, tx: Tx, *, merchant_id: str, currency: str, start_ms: int, end_ms: int, cutoff_ms: int) -> str:
        """The batch of this currency being built; made with its opening lines (carried-in nets and
        reserves released, which it takes over) the first time the currency shows up."""
        existing = store.draft(tx, merchant_id=merchant_id, currency=currency, period_end_ms=end_ms)
        if existing is not None:
            return existing["id"]
        settlement_id = new_id("stl")
        store.insert_settlement(tx, {
            "id": settlement_id, "merchant_id": merchant_id, "currency": currency, "period_start_ms": start_ms,
            "period_end_ms": end_ms, "cutoff_at_ms": cutoff_ms, "status": "pending", "gross": 0, "refunds": 0,
            "chargebacks": 0, "fees": 0, "commission": 0, "partner_shares": 0, "reserve_held": 0, "reserve_released": 0,
            "carried_in": 0, "net_payable": 0, "reserve_release_at_ms": None, "created_at_ms": self._clock.now_ms(),
            "complete": 0, "gross_by_channel": "{}"})
        carried = [Line(kind="carried", reference=batch["settlement_id"], order_id=None, channel=batch["channel"],
                        amount=0, fee=0, commission=0, partner_shares=0, net=batch["net"],
                        occurred_at_ms=batch["period_end_ms"])
                   for batch in store.carried_open(tx, merchant_id=merchant_id) if batch["currency"] == currency]
        released = [Line(kind="reserve_release", reference=hold["settlement_id"], order_id=None, channel=hold["channel"],
                         amount=0, fee=0, commission=0, partner_shares=0, net=-hold["net"],
                         occurred_at_ms=hold["reserve_release_at_ms"])
                    for hold in store.reserves_due(tx, merchant_id=merchant_id, at_ms=cutoff_ms)
                    if hold["currency"] == currency]
        self._add_lines(tx, settlement_id, [*carried, *released])
        store.mark_reserve_released(tx, settlement_ids=sorted({line.reference for line in released}),
                                    released_by=settlement_id)
        store.mark_carried_into(tx, settlement_ids=sorted({line.reference for line in carried}),
                                carried_into=settlement_id)
        return settlement_id

    @staticmethod
    def _add_lines(tx: Tx, settlement_id: str, lines: list[Line]) -> None:
        """Append lines to a batch being built, numbered on, and add them to its totals."""
        if not lines:
            return
        first = store.line_count(tx, settlement_id=settlement_id) + 1
        store.insert_lines(tx, [(settlement_id, number, line.kind, line.reference, line.order_id, line.channel,
                                 line.amount, line.fee, line.commission, line.partner_shares, line.net,
                                 line.occurred_at_ms) for number, line in enumerate(lines, start=first)])
        gross_by_channel = _gross_decoder.decode(store.get_settlement_tx(tx, settlement_id=settlement_id)["gross_by_channel"])
        for channel, gross in payment_gross_by_channel(lines).items():
            gross_by_channel[channel] = gross_by_channel.get(channel, 0) + gross
        store.add_to_draft(tx, settlement_id=settlement_id, totals=line_totals(lines),
                           gross_by_channel=msgspec.json.encode(gross_by_channel).decode())

    def _complete(self, tx: Tx, *, merchant_id: str, schedule: Schedule, start_ms: int, end_ms: int,
                  cutoff_ms: int) -> list[str]:
        """The last chunk: every batch of the cut-off gets its reserve hold and status, and shows."""
        # A currency gets a batch when something happened in it; carried nets wait for one.
        for currency in sorted({hold["currency"] for hold in store.reserves_due(tx, merchant_id=merchant_id, at_ms=cutoff_ms)}):
            self._draft(tx, merchant_id=merchant_id, currency=currency, start_ms=start_ms, end_ms=end_ms,
                        cutoff_ms=cutoff_ms)
        made = []
        for draft in store.drafts(tx, merchant_id=merchant_id, period_end_ms=end_ms):
            settlement_id = draft["id"]
            held = reserve_hold_lines(settlement_id=settlement_id, gross_by_channel=_gross_decoder.decode(draft["gross_by_channel"]),
                                      reserve_bps=schedule.reserve_bps, at_ms=cutoff_ms)
            self._add_lines(tx, settlement_id, held)
            net_payable = draft["net_payable"] + sum(line.net for line in held)
            status = batch_status(net_payable=net_payable, minimum_payout=schedule.minimum_payout.get(draft["currency"], 0))
            store.complete_draft(tx, settlement_id=settlement_id, status=status,
                                 reserve_release_at_ms=reserve_release_at_ms(schedule, cutoff_ms) if held else None)
            if self._emits:
                tx.emit(merchant_id=merchant_id, type="settlement.created", kind="settlement", object_id=settlement_id)
            made.append(settlement_id)
        return made

    @staticmethod
    def _activity(rows: list[Row], *, start_ms: int, end_ms: int) -> tuple[dict[str, list[Line]], list[tuple[int, str]]]:
        """One line per ledger transaction (and currency) of a chunk, by currency, in posting order;
        and the (created_at_ms, id) of each transaction taken, in order."""
        taken: dict[str, tuple[int, str]] = {}
        lines: dict[str, list[Line]] = {}
        for row in rows:
            assert start_ms <= row["created_at_ms"] < end_ms
            taken.setdefault(row["transaction_id"], (row["created_at_ms"], row["transaction_id"]))
            lines.setdefault(row["currency"], []).append(activity_line(
                ledger_kind=row["kind"], reference=row["reference"], order_id=row["order_id"],
                occurred_at_ms=row["created_at_ms"], sums={family: row[family] for family in ACTIVITY_FAMILIES},
                channel_account=row["channel_account"]))
        return lines, list(taken.values())

    # -- payout ------------------------------------------------------------------------------------
    async def mark_paid(self, *, settlement_id: str, payout_reference: str) -> SettlementDetailView:
        """pending -> paid (admin), posting the payout to the ledger in the same transaction."""

        def transaction(tx: Tx) -> SettlementDetailView:
            row = store.get_settlement_tx(tx, settlement_id=settlement_id)
            if row is None or not row["complete"]:  # one being built is not there yet
                raise NotFound(f"No such settlement: '{settlement_id}'", param="id")
            if row["status"] != "pending":
                raise InvalidTransition(f"A settlement in status '{row['status']}' cannot be paid.")
            if row["merchant_kyc_status"] != "verified":  # the batch stays pending; its payout waits
                raise MerchantKycRequired(f"The merchant's KYC is '{row['merchant_kyc_status']}': payouts wait for "
                                          "'verified'.", param="id")
            lines = store.settlement_lines_tx(tx, settlement_id=settlement_id)
            channel_nets: dict[str | None, int] = {}
            for line in lines:
                channel_nets[line["channel"]] = channel_nets.get(line["channel"], 0) + line["net"]
            entries = payout_entries(merchant_id=row["merchant_id"], currency=row["currency"], net_payable=row["net_payable"],
                                     channel_nets=channel_nets)
            posted = self._ledger.post(tx, merchant_id=row["merchant_id"], kind="settlement_payout", reference=settlement_id,
                                       entries=entries, memo=f"payout {payout_reference}")
            assert posted, f"settlement {settlement_id} was pending but its payout was posted before"
            marked = store.mark_paid(tx, settlement_id=settlement_id, payout_reference=payout_reference,
                                     now_ms=self._clock.now_ms())
            if not marked:  # the writer is alone and the status was read as pending: a broken store
                raise RuntimeError(f"settlement {settlement_id} was pending but could not be marked paid")
            return _detail(store.get_settlement_tx(tx, settlement_id=settlement_id), lines)

        return await self._db.write(transaction)

    # -- reads -----------------------------------------------------------------------------------
    async def list(self, *, merchant_id: str, after_id: str | None, limit: int, status: str | None = None,
                   currency: str | None = None) -> tuple[list[SettlementView], bool]:
        assert 1 <= limit <= 100
        rows = await store.list_settlements(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1,
                                            status=status, currency=currency)
        return page_of(rows, limit, lambda r: SettlementView(**_settlement_fields(r)))

    async def _row(self, merchant_id: str, settlement_id: str) -> Row:
        row = await store.fetch_settlement(self._db, settlement_id=settlement_id)
        if row is None or row["merchant_id"] != merchant_id:
            raise NotFound(f"No such settlement: '{settlement_id}'", param="id")
        return row

    async def get(self, *, merchant_id: str, settlement_id: str) -> SettlementDetailView:
        row = await self._row(merchant_id, settlement_id)
        return _detail(row, await store.fetch_lines(self._db, settlement_id=settlement_id))

    async def csv(self, *, merchant_id: str, settlement_id: str) -> bytes:
        """The batch's lines as CSV: a header row, then one row per line (times RFC 3339)."""
        row = await self._row(merchant_id, settlement_id)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(_CSV_HEADER)
        lines = await store.fetch_lines(self._db, settlement_id=settlement_id)
        for line in lines:
            writer.writerow((settlement_id, line["line"], line["kind"], line["reference"], line["order_id"] or "",
                             line["channel"] or "", row["currency"], line["amount"], line["fee"], line["commission"],
                             line["partner_shares"], line["net"], format_rfc3339(line["occurred_at_ms"])))
        assert buffer.getvalue().count("\r\n") >= len(lines) + 1
        return buffer.getvalue().encode()

"""AML monitoring in the write path, AML cases, and the KYC hold of large payments.

`on_paid_tx` runs in the transaction that books a successful payment (services/payments/
callbacks.py), before its order is delivered. In the merchant's currency (FX rate in force) it
counts what the player paid, in the risk counters' buckets keyed by the same keyed hash of the
player (hour buckets: the last 24 hours; day buckets: the last 30 days), and the payments just
under the structuring threshold (hour buckets, the configured window). A payment that takes the
24-hour or 30-day total over its threshold, or that makes N near-threshold payments in the
window, is a hit: it appends to the player's open case of that kind, or opens one (`amc_`) and
raises an alert. The same transaction decides the KYC hold: over the per-payment or 30-day KYC
threshold, a player whose KYC is not `verified` waits in `in_review` (reason `kyc_required`).
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from apss.clock import Clock, format_rfc3339
from apss.config import AmlConfig
from apss.domain.fx import convert
from apss.domain.risk.kyc import CASE_KINDS, CaseStatus, case_transition, near_below
from apss.domain.risk.rules import Decision, FiredRule
from apss.errors import NotFound
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant
from apss.services.money.fx import quote_tx as fx_quote_tx
from apss.services.orders import lifecycle
from apss.services.paging import page_of
from apss.services.risk.engine import Assessment, RiskEngine
from apss.store import aml as store
from apss.store import risk as counters
from apss.store.db import Database, Row, Tx

__all__ = [
    "CSV_ROWS_MAX",
    "Aml",
    "AmlCaseDetail",
    "AmlCaseList",
    "AmlCaseUpdate",
    "AmlCaseView",
    "AmlSettingsIn",
    "AmlSettingsView",
]

log = logging.getLogger("apss.aml")

CSV_ROWS_MAX = 10_000  # cases in one export (newest first)
_PAID = "paid:player"  # what the player paid (merchant currency, minor units)
_NEAR = "near:player"  # payments just under the structuring threshold
_HOUR_S, _DAY_S = 3600, counters.DAY_GRAIN_S
CaseStatusName = Literal["open", "investigating", "reported", "closed"]
Threshold = Annotated[int, Meta(ge=0, le=10**15)]


class AmlSettingsIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Each field replaces the merchant's value; null (or absent) takes the config default."""

    daily_threshold: Threshold | None = None
    rolling_30d_threshold: Threshold | None = None
    structuring_threshold: Threshold | None = None
    structuring_count: Annotated[int, Meta(ge=2, le=1000)] | None = None
    structuring_window_h: Annotated[int, Meta(ge=1, le=168)] | None = None
    structuring_margin_bps: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    kyc_payment_threshold: Threshold | None = None
    kyc_30d_threshold: Threshold | None = None


class AmlSettingsView(msgspec.Struct, frozen=True, kw_only=True):
    currency: str  # the merchant's: every amount is in its minor units
    daily_threshold: int
    rolling_30d_threshold: int
    structuring_threshold: int
    structuring_count: int
    structuring_window_h: int
    structuring_margin_bps: int
    kyc_payment_threshold: int
    kyc_30d_threshold: int


class AmlCaseUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    status: CaseStatusName | None = None
    note: Annotated[str, Meta(min_length=1, max_length=2000)] | None = None


class AmlHitView(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    payment_id: str
    amount: int
    observed: int  # the window's total with this payment (a count of payments for structuring)
    threshold: int
    created_at: str


class AmlCaseEventView(msgspec.Struct, frozen=True, kw_only=True):
    from_status: str | None
    to_status: str
    note: str | None
    created_at: str


class AmlCaseView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    player_id: str
    kind: Literal["daily_threshold", "rolling_30d_threshold", "structuring"]
    status: CaseStatusName
    currency: str
    hits: int
    amount_total: int
    note: str | None
    created_at: str
    updated_at: str


class AmlCaseDetail(AmlCaseView, frozen=True, kw_only=True):
    hit_list: list[AmlHitView]
    events: list[AmlCaseEventView]


class AmlCaseList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[AmlCaseView]
    has_more: bool
    next_cursor: str | None


def _case_view(row: Row) -> AmlCaseView:
    return AmlCaseView(id=row["id"], player_id=row["player_id"], kind=row["kind"], status=row["status"],
                       currency=row["currency"], hits=row["hits"], amount_total=row["amount_total"], note=row["note"],
                       created_at=format_rfc3339(row["created_at_ms"]), updated_at=format_rfc3339(row["updated_at_ms"]))


_CSV_HEADER = ["id", "player_id", "kind", "status", "currency", "hits", "amount_total", "note", "created_at", "updated_at"]


class Aml:
    def __init__(self, *, db: Database, clock: Clock, config: AmlConfig, engine: RiskEngine, idempotency: Idempotency,
                 fx_rate_age_max_s: int) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._engine = engine
        self._idempotency = idempotency
        self._fx_age_max_ms = fx_rate_age_max_s * 1000

    # -- settings --------------------------------------------------------------------------
    def _settings(self, row: Row | None, currency: str) -> AmlSettingsView:
        defaults = msgspec.structs.asdict(self._config)
        merged = {name: (row[name] if row is not None and row[name] is not None else value)
                  for name, value in defaults.items()}
        return AmlSettingsView(currency=currency, **merged)

    async def get_settings(self, *, merchant: Merchant) -> AmlSettingsView:
        return self._settings(await store.fetch_settings(self._db, merchant_id=merchant.id), merchant.currency)

    async def put_settings(self, *, merchant: Merchant, command: AmlSettingsIn) -> AmlSettingsView:
        def transaction(tx: Tx) -> AmlSettingsView:
            store.upsert_settings(tx, {"merchant_id": merchant.id, "updated_at_ms": self._clock.now_ms(),
                                       **msgspec.structs.asdict(command)})
            return self._settings(store.settings_tx(tx, merchant_id=merchant.id), merchant.currency)

        return await self._db.write(transaction)

    # -- the write path --------------------------------------------------------------------
    def _in_merchant_currency(self, tx: Tx, *, amount: int, currency: str, merchant_currency: str) -> int | None:
        if currency == merchant_currency:
            return amount
        quote = fx_quote_tx(tx, base=currency, quote=merchant_currency, now_ms=self._clock.now_ms(),
                            age_max_ms=self._fx_age_max_ms)
        return None if quote is None else convert(amount, from_currency=currency, to_currency=merchant_currency,
                                                  rate=quote.rate)

    def on_paid_tx(self, tx: Tx, *, order: Row, payment: Row, merchant_currency: str, risk_hold: bool) -> bool:
        """Count the payment, open or append to cases, and say whether the order waits for the
        player's KYC (True: the caller holds it in in_review; the hold is recorded here)."""
        assert payment["order_id"] == order["id"], (payment["order_id"], order["id"])
        amount = self._in_merchant_currency(tx, amount=payment["amount"], currency=payment["currency"],
                                            merchant_currency=merchant_currency)
        if amount is None:  # no rate to convert: nothing to count it in (the merchant sets rates)
            log.warning("AML: no %s/%s rate for payment %s: not counted", payment["currency"], merchant_currency,
                        payment["id"])
            return False
        merchant_id, player_id = order["merchant_id"], order["player_id"]
        settings = self._settings(store.settings_tx(tx, merchant_id=merchant_id), merchant_currency)
        key, now_s = self._engine.keyed_hash(f"p:{player_id}"), self._clock.now_ms() // 1000
        day = counters.window_sum_tx(tx, merchant_id=merchant_id, dimension=_PAID, key=key, grain_s=_HOUR_S,
                                     buckets=24, now_s=now_s) + amount
        month = counters.window_sum_tx(tx, merchant_id=merchant_id, dimension=_PAID, key=key, grain_s=_DAY_S,
                                       buckets=30, now_s=now_s) + amount
        near = near_below(amount, threshold=settings.structuring_threshold, margin_bps=settings.structuring_margin_bps)
        near_count = counters.window_sum_tx(tx, merchant_id=merchant_id, dimension=_NEAR, key=key, grain_s=_HOUR_S,
                                            buckets=settings.structuring_window_h, now_s=now_s) + 1 if near else 0
        counters.bump_counters(tx, merchant_id=merchant_id, increments=[(_PAID, key, amount)], now_s=now_s,
                               grains_s=(*counters.GRAINS_S, _DAY_S))
        if near:
            counters.bump_counters(tx, merchant_id=merchant_id, increments=[(_NEAR, key, 1)], now_s=now_s)
        hits = [(kind, observed, threshold) for kind, observed, threshold, hit in (
            ("daily_threshold", day, settings.daily_threshold, 0 < settings.daily_threshold < day),
            ("rolling_30d_threshold", month, settings.rolling_30d_threshold, 0 < settings.rolling_30d_threshold < month),
            ("structuring", near_count, settings.structuring_count, near and near_count >= settings.structuring_count),
        ) if hit]
        for kind, observed, threshold in hits:
            self._hit_tx(tx, order=order, payment=payment, kind=kind, amount=amount, observed=observed,
                         threshold=threshold, currency=merchant_currency)
        return self._kyc_hold_tx(tx, order=order, settings=settings, amount=amount, month=month, risk_hold=risk_hold)

    def _hit_tx(self, tx: Tx, *, order: Row, payment: Row, kind: str, amount: int, observed: int, threshold: int,
                currency: str) -> None:
        assert kind in CASE_KINDS, kind
        merchant_id, now_ms = order["merchant_id"], self._clock.now_ms()
        case = store.open_case_tx(tx, merchant_id=merchant_id, player_id=order["player_id"], kind=kind)
        case_id = case["id"] if case is not None else new_id("amc")
        if case is None:
            store.insert_case(tx, {"id": case_id, "merchant_id": merchant_id, "player_id": order["player_id"],
                                   "kind": kind, "currency": currency, "created_at_ms": now_ms})
            # The alert names the case, not the player (alerts are shown on the dashboard).
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind=f"aml_{kind}", severity="warning", object_id=case_id,
                                  now_ms=now_ms, message=f"AML case {case_id} opened ({kind}): payment {payment['id']}, "
                                                         f"observed {observed} against {threshold}")
        store.append_hit(tx, case_id=case_id, order_id=order["id"], payment_id=payment["id"], amount=amount,
                         observed=observed, threshold=threshold, now_ms=now_ms)

    def _kyc_hold_tx(self, tx: Tx, *, order: Row, settings: AmlSettingsView, amount: int, month: int,
                     risk_hold: bool) -> bool:
        over_payment = 0 < settings.kyc_payment_threshold < amount
        over_month = 0 < settings.kyc_30d_threshold < month
        if not (over_payment or over_month):
            return False
        kyc = store.get_player_kyc_tx(tx, merchant_id=order["merchant_id"], player_id=order["player_id"])
        status = kyc["status"] if kyc is not None else "unverified"
        if status == "verified":
            return False
        rule = (f"kyc_status != 'verified' and amount_merchant > {settings.kyc_payment_threshold}" if over_payment else
                f"kyc_status != 'verified' and paid_30d > {settings.kyc_30d_threshold}")
        decision = Decision(action="review", three_ds=False,
                            fired=[FiredRule(name="kyc_required", rule=rule, action="review")])
        attributes = {"kyc_status": status, "amount_merchant": amount, "paid_30d": month,
                      "kyc_payment_threshold": settings.kyc_payment_threshold,
                      "kyc_30d_threshold": settings.kyc_30d_threshold}
        self._engine.record_tx(tx, order_id=order["id"], merchant_id=order["merchant_id"], stage="callback",
                               assessment=Assessment(decision=decision, score=0, attributes=attributes))
        store.insert_hold(tx, order_id=order["id"], merchant_id=order["merchant_id"], player_id=order["player_id"],
                          risk_hold=risk_hold, now_ms=self._clock.now_ms())
        return True

    # -- cases -----------------------------------------------------------------------------
    async def list_cases(self, *, merchant: Merchant, after_id: str | None, limit: int, status: str | None,
                         player_id: str | None) -> tuple[list[AmlCaseView], bool]:
        rows = await store.list_cases(self._db, merchant_id=merchant.id, after_id=after_id, limit=limit + 1,
                                      status=status, player_id=player_id)
        return page_of(rows, limit, _case_view)

    async def get_case(self, *, merchant: Merchant, case_id: str) -> AmlCaseDetail:
        row = await store.fetch_case(self._db, merchant_id=merchant.id, case_id=case_id)
        if row is None:
            raise NotFound(f"No such AML case: '{case_id}'", param="id")
        hits = await store.case_hits(self._db, case_id=case_id)
        events = await store.case_events(self._db, case_id=case_id)
        return AmlCaseDetail(**msgspec.structs.asdict(_case_view(row)), hit_list=[
            AmlHitView(order_id=h["order_id"], payment_id=h["payment_id"], amount=h["amount"], observed=h["observed"],
                       threshold=h["threshold"], created_at=format_rfc3339(h["created_at_ms"])) for h in hits],
            events=[AmlCaseEventView(from_status=e["from_status"], to_status=e["to_status"], note=e["note"],
                                     created_at=format_rfc3339(e["created_at_ms"])) for e in events])

    async def update_case(self, *, merchant: Merchant, case_id: str, command: AmlCaseUpdate,
                          idem: IdempotencyRequest | None) -> Outcome:
        """Move the case (open -> investigating -> reported | closed) and/or add a note."""

        def transaction(tx: Tx) -> AmlCaseView:
            row = store.get_case_tx(tx, merchant_id=merchant.id, case_id=case_id)
            if row is None:
                raise NotFound(f"No such AML case: '{case_id}'", param="id")
            now_ms = self._clock.now_ms()
            if command.status is not None and command.status != row["status"]:
                wanted = case_transition(CaseStatus(row["status"]), CaseStatus(command.status))  # 409 off the table
                moved = store.set_case_status(tx, case_id=case_id, from_status=row["status"], to_status=wanted.value,
                                              note=command.note, now_ms=now_ms)
                assert moved, "read on the writer just before"
            elif command.status is not None:  # the same status again: refused like any move off the table
                case_transition(CaseStatus(row["status"]), CaseStatus(command.status))
            elif command.note is not None:
                store.insert_case_event(tx, case_id=case_id, status=row["status"], note=command.note, now_ms=now_ms)
            return _case_view(store.get_case_tx(tx, merchant_id=merchant.id, case_id=case_id))

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction,
                                           success_status=200)

    async def cases_csv(self, *, merchant: Merchant, status: str | None, player_id: str | None) -> bytes:
        """Every case (newest first, at most CSV_ROWS_MAX) as CSV: a header row, then one row each."""
        rows = await store.list_cases(self._db, merchant_id=merchant.id, after_id=None, limit=CSV_ROWS_MAX,
                                      status=status, player_id=player_id)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(_CSV_HEADER)
        for row in rows:
            view = _case_view(row)
            writer.writerow([view.id, view.player_id, view.kind, view.status, view.currency, view.hits,
                             view.amount_total, _csv_safe(view.note or ""), view.created_at, view.updated_at])
        return buffer.getvalue().encode()


def _csv_safe(text: str) -> str:
    """A note that a spreadsheet would run as a formula is quoted with a leading apostrophe."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

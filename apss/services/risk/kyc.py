"""Player KYC set by the merchant, minors' spending limits, and the KYC holds it releases.

- `PUT /v1/players/{id}/kyc` stores the status, the verified birth date or age and the
  jurisdiction. Setting `verified` delivers the player's paid orders held for KYC (those a risk
  rule does not also hold); `rejected` takes them down the review's reject path (full refund,
  units back in stock).
- Minors' limits: at order creation, inside the reserve transaction and before anything is
  written, `check_minor_tx` finds the band of the player's age in the jurisdiction's preset (the
  merchant's own, else the built-in one) and refuses with 409 minor_spending_limit a payment over
  its per-payment limit, or one that takes the calendar month (jurisdiction time zone) over its
  monthly limit, counting the month's pending and paid orders. The order's amount is converted
  into the band's currency at the FX rate in force; the check and the order's own spend row run
  in the same writer transaction, so a parallel burst cannot pass the limit.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from apss.clock import Clock, format_rfc3339
from apss.crypto import Keyring
from apss.domain.fx import convert
from apss.domain.money import is_iso_currency
from apss.domain.orders import OrderStatus
from apss.domain.risk.kyc import (
    BUILTIN_PRESETS,
    MinorBand,
    MinorPreset,
    age_on,
    band_for,
    month_of,
)
from apss.errors import InvalidRequest, MinorSpendingLimit
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant
from apss.services.money.fx import quote_tx as fx_quote_tx
from apss.services.risk.control import RiskControl
from apss.store import aml as store
from apss.store import orders
from apss.store.db import Database, Row, Tx

__all__ = ["Kyc", "MinorBandIn", "MinorLimitsIn", "MinorPresetList", "MinorPresetView", "PlayerKycIn", "PlayerKycView"]

KycStatus = Literal["unverified", "pending", "verified", "rejected"]
Jurisdiction = Annotated[str, Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2, e.g. CN")]
# Orders that count against a month: pending (reserved) and paid ones.
_COUNTED = tuple(s.value for s in (OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.IN_REVIEW, OrderStatus.DELIVERING,
                                   OrderStatus.FULFILLED, OrderStatus.PARTIALLY_REFUNDED))
BANDS_MAX = 20
Amount = Annotated[int, Meta(ge=0, le=10**15)]


class PlayerKycIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    status: KycStatus
    age: Annotated[int, Meta(ge=0, le=150)] | None = None  # the verified age (taken as given: it does not advance)
    birth_date: Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")] | None = None  # the verified birth date
    jurisdiction: Jurisdiction | None = None


class PlayerKycView(msgspec.Struct, frozen=True, kw_only=True):
    player_id: str
    status: KycStatus
    age: int | None  # from birth_date when set (today, in the jurisdiction's time zone)
    birth_date: str | None
    jurisdiction: str | None
    minor_limits: MinorBand | None  # the band that applies to the player now, if any
    updated_at: str | None


class MinorBandIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min_age: Annotated[int, Meta(ge=0, le=149)]
    max_age: Annotated[int, Meta(ge=1, le=150)]  # exclusive
    per_payment: Amount | None = None  # null: no limit; 0: no payments
    per_month: Amount | None = None
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]


class MinorLimitsIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    jurisdiction: Jurisdiction
    timezone: Annotated[str, Meta(min_length=1, max_length=64, description="IANA zone; default the built-in "
                                                                           "preset's, else UTC")] | None = None
    bands: Annotated[list[MinorBandIn], Meta(min_length=1, max_length=BANDS_MAX)]


class MinorPresetView(msgspec.Struct, frozen=True, kw_only=True):
    jurisdiction: str
    timezone: str
    bands: list[MinorBand]
    builtin: bool


class MinorPresetList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[MinorPresetView]  # every preset: one page
    has_more: bool
    next_cursor: str | None


def _preset_of(row: Row) -> MinorPreset:
    return MinorPreset(jurisdiction=row["jurisdiction"], timezone=row["timezone"],
                       bands=msgspec.json.decode(row["bands"], type=list[MinorBand]))


class Kyc:
    def __init__(self, *, db: Database, clock: Clock, keyring: Keyring, idempotency: Idempotency, risk: RiskControl,
                 fx_rate_age_max_s: int) -> None:
        self._db = db
        self._keyring = keyring
        self._clock = clock
        self._idempotency = idempotency
        self._risk = risk
        self._fx_age_max_ms = fx_rate_age_max_s * 1000

    # -- presets ---------------------------------------------------------------------------
    def _preset_tx(self, tx: Tx, *, merchant_id: str, jurisdiction: str) -> MinorPreset | None:
        row = store.get_preset_tx(tx, merchant_id=merchant_id, jurisdiction=jurisdiction)
        return _preset_of(row) if row is not None else BUILTIN_PRESETS.get(jurisdiction)

    async def put_preset(self, *, merchant: Merchant, command: MinorLimitsIn, idem: IdempotencyRequest | None) -> Outcome:
        builtin = BUILTIN_PRESETS.get(command.jurisdiction)
        timezone = command.timezone or (builtin.timezone if builtin else "UTC")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidRequest(f"'{timezone}' is not an IANA time zone.", code="timezone_invalid", param="timezone") from None
        ordered = sorted(enumerate(command.bands), key=lambda pair: pair[1].min_age)
        for index, band in ordered:
            if band.max_age <= band.min_age:
                raise InvalidRequest("max_age must exceed min_age.", code="band_invalid", param=f"bands[{index}].max_age")
            if not is_iso_currency(band.currency):
                raise InvalidRequest(f"'{band.currency}' is not an ISO 4217 currency.", code="currency_not_supported",
                                     param=f"bands[{index}].currency")
        for (_, lower), (index, upper) in itertools.pairwise(ordered):
            if upper.min_age < lower.max_age:
                raise InvalidRequest("Bands may not overlap.", code="bands_overlap", param=f"bands[{index}].min_age")
        bands = [MinorBand(**msgspec.structs.asdict(b)) for b in sorted(command.bands, key=lambda b: b.min_age)]

        def transaction(tx: Tx) -> MinorPresetView:
            store.upsert_preset(tx, {"merchant_id": merchant.id, "jurisdiction": command.jurisdiction, "timezone": timezone,
                                     "bands": msgspec.json.encode(bands).decode(), "updated_at_ms": self._clock.now_ms()})
            return MinorPresetView(jurisdiction=command.jurisdiction, timezone=timezone, bands=bands, builtin=False)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction,
                                           success_status=200)

    async def list_presets(self, *, merchant: Merchant) -> MinorPresetList:
        """The merchant's presets and the built-in ones it did not replace, by jurisdiction."""
        own = {row["jurisdiction"]: _preset_of(row) for row in await store.list_presets(self._db, merchant_id=merchant.id)}
        every = {**{k: v for k, v in BUILTIN_PRESETS.items() if k not in own}, **own}
        return MinorPresetList(data=[MinorPresetView(jurisdiction=p.jurisdiction, timezone=p.timezone, bands=p.bands,
                                                     builtin=p.builtin) for _, p in sorted(every.items())],
                               has_more=False, next_cursor=None)

    # -- players ---------------------------------------------------------------------------
    def _birth_date(self, kyc: Row) -> str | None:
        sealed = kyc["birth_date_sealed"]
        return self._keyring.open(sealed, context=f"kyc:{kyc['merchant_id']}:{kyc['player_id']}") if sealed else None

    def _age(self, kyc: Row, preset: MinorPreset | None) -> int | None:
        birth_date = self._birth_date(kyc)
        if birth_date is not None:
            return age_on(birth_date, now_ms=self._clock.now_ms(), timezone=preset.timezone if preset else "UTC")
        return kyc["age"]

    def _view_tx(self, tx: Tx, *, merchant_id: str, player_id: str) -> PlayerKycView:
        kyc = store.get_player_kyc_tx(tx, merchant_id=merchant_id, player_id=player_id)
        return self._view(player_id, kyc, self._preset_tx(tx, merchant_id=merchant_id, jurisdiction=kyc["jurisdiction"])
                          if kyc is not None and kyc["jurisdiction"] else None)

    def _view(self, player_id: str, kyc: Row | None, preset: MinorPreset | None) -> PlayerKycView:
        if kyc is None:
            return PlayerKycView(player_id=player_id, status="unverified", age=None, birth_date=None, jurisdiction=None,
                                 minor_limits=None, updated_at=None)
        age = self._age(kyc, preset)
        return PlayerKycView(player_id=player_id, status=kyc["status"], age=age, birth_date=self._birth_date(kyc),
                             jurisdiction=kyc["jurisdiction"], updated_at=format_rfc3339(kyc["updated_at_ms"]),
                             minor_limits=band_for(preset, age) if preset is not None and age is not None else None)

    async def get_player(self, *, merchant: Merchant, player_id: str) -> PlayerKycView:
        kyc = await store.fetch_player_kyc(self._db, merchant_id=merchant.id, player_id=player_id)
        preset = None
        if kyc is not None and kyc["jurisdiction"]:
            rows = {r["jurisdiction"]: r for r in await store.list_presets(self._db, merchant_id=merchant.id)}
            own = rows.get(kyc["jurisdiction"])
            preset = _preset_of(own) if own is not None else BUILTIN_PRESETS.get(kyc["jurisdiction"])
        return self._view(player_id, kyc, preset)

    async def put_player(self, *, merchant: Merchant, player_id: str, command: PlayerKycIn,
                         idem: IdempotencyRequest | None) -> Outcome:
        sealed = None
        if command.birth_date is not None:
            self._check_birth_date(command.birth_date)
            sealed = self._keyring.seal(command.birth_date, context=f"kyc:{merchant.id}:{player_id}")

        def transaction(tx: Tx) -> PlayerKycView:
            store.upsert_player_kyc(tx, {"merchant_id": merchant.id, "player_id": player_id, "status": command.status,
                                         "birth_date_sealed": sealed, "age": command.age,
                                         "jurisdiction": command.jurisdiction, "updated_at_ms": self._clock.now_ms()})
            if command.status in ("verified", "rejected"):
                self._settle_holds_tx(tx, merchant=merchant, player_id=player_id, verified=command.status == "verified")
            return self._view_tx(tx, merchant_id=merchant.id, player_id=player_id)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction,
                                           success_status=200)

    def _check_birth_date(self, text: str) -> None:
        """A real date, not after today anywhere on Earth, and a human age (at most 150)."""
        bad = InvalidRequest("birth_date is a past date, YYYY-MM-DD.", code="birth_date_invalid", param="birth_date")
        try:
            born = dt.date.fromisoformat(text)
        except ValueError:
            raise bad from None
        latest = dt.datetime.fromtimestamp(self._clock.now_ms() / 1000, tz=dt.UTC) + dt.timedelta(hours=14)
        if born > latest.date() or latest.year - born.year > 150:
            raise bad

    def _settle_holds_tx(self, tx: Tx, *, merchant: Merchant, player_id: str, verified: bool) -> None:
        """The player's orders held for KYC: verified delivers them (unless a risk rule holds
        them too), rejected refunds them as the review's reject does."""
        now_ms = self._clock.now_ms()
        for hold in store.held_orders_tx(tx, merchant_id=merchant.id, player_id=player_id):
            order = orders.get_order_tx(tx, order_id=hold["order_id"], merchant_id=merchant.id)
            still_held = order is not None and order["status"] == OrderStatus.IN_REVIEW.value
            if still_held and verified and not hold["risk_hold"]:
                self._risk.approve_tx(tx, merchant=merchant, order_id=order["id"], cause="kyc:verified")
            elif still_held and not verified:
                self._risk.reject_tx(tx, merchant=merchant, order_id=order["id"], cause="kyc:rejected",
                                     reason="kyc_rejected")
            store.set_hold_status(tx, order_id=hold["order_id"], status="released" if verified else "rejected",
                                  now_ms=now_ms)

    # -- minors at order creation ----------------------------------------------------------
    def check_minor_tx(self, tx: Tx, *, merchant_id: str, player_id: str, amount: int, currency: str) -> dict | None:
        """Refuse (409 minor_spending_limit) an order over the player's minors' band; else the
        spend row to record with the order (None when no band applies). Checks only: no writes."""
        kyc = store.get_player_kyc_tx(tx, merchant_id=merchant_id, player_id=player_id)
        if kyc is None or not kyc["jurisdiction"] or (kyc["age"] is None and kyc["birth_date_sealed"] is None):
            return None
        preset = self._preset_tx(tx, merchant_id=merchant_id, jurisdiction=kyc["jurisdiction"])
        if preset is None:
            return None
        band = band_for(preset, self._age(kyc, preset))
        if band is None:
            return None
        converted = self._converted_tx(tx, amount=amount, currency=currency, band=band)
        where = f"{preset.jurisdiction} minors' limit"
        if band.per_payment is not None and converted > band.per_payment:
            raise MinorSpendingLimit(f"The {where} allows at most {band.per_payment} {band.currency} (minor units) a "
                                     f"payment; this order is {converted}.", param="items")
        month = month_of(self._clock.now_ms(), timezone=preset.timezone)
        spent = store.month_spend_tx(tx, merchant_id=merchant_id, player_id=player_id, month=month,
                                     currency=band.currency, statuses=_COUNTED)
        if band.per_month is not None and spent + converted > band.per_month:
            raise MinorSpendingLimit(f"The {where} allows at most {band.per_month} {band.currency} (minor units) a "
                                     f"month; {spent} is spent or pending in {month}.", param="items")
        return {"merchant_id": merchant_id, "player_id": player_id, "month": month, "currency": band.currency,
                "amount": converted, "created_at_ms": self._clock.now_ms()}

    def _converted_tx(self, tx: Tx, *, amount: int, currency: str, band: MinorBand) -> int:
        if currency == band.currency:
            return amount
        quote = fx_quote_tx(tx, base=currency, quote=band.currency, now_ms=self._clock.now_ms(),
                            age_max_ms=self._fx_age_max_ms) if is_iso_currency(currency) else None
        if quote is None:  # fail closed: a limit that cannot be checked is not passed
            raise MinorSpendingLimit(f"No {currency}/{band.currency} rate to check the player's minors' limit.",
                                     param="currency")
        return convert(amount, from_currency=currency, to_currency=band.currency, rate=quote.rate)

    @staticmethod
    def record_spend_tx(tx: Tx, *, order_id: str, spend: dict) -> None:
        store.insert_spend(tx, {**spend, "order_id": order_id})

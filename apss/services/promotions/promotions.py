"""Promotions: create, read, list, update; and, inside an order's write transaction, which of
them apply (apss/domain/promotions.py has the rules) and the redemptions the order holds.

A redemption counts from the order's creation (held, with its stock reservation), is taken when
the order is paid and released when it ends unpaid (orders/lifecycle.py); a refund does not give
it back. Every check is made inside the single writer just before the hold is written, so two
orders can never both take the last redemption or the last flash-sale unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from apss.clock import Clock, format_rfc3339, parse_rfc3339
from apss.domain.catalog import ProductCategory
from apss.domain.money import is_iso_currency
from apss.domain.promotions import (
    CouponExhausted,
    CouponInvalid,
    CouponNotApplicable,
    LineToPrice,
    Pricing,
    PromotionRule,
    price_lines,
    rule_discounts,
)
from apss.errors import Conflict, CurrencyNotSupported, InvalidRequest, NotFound
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.paging import page_of
from apss.store import catalog as catalog_store
from apss.store import promotions as store
from apss.store.db import Database, Row, Tx

__all__ = ["AUTOMATIC_PROMOTIONS_MAX", "CouponCode", "CouponEntered", "PromotionCreate", "PromotionList", "PromotionUpdate",
           "PromotionView", "Promotions"]

# At most this many automatic promotions are considered for one order (the oldest in force).
AUTOMATIC_PROMOTIONS_MAX = 100
CouponCode = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]{3,40}$")]
# A code as a player types it: any text is looked up (and an unknown one is `coupon_invalid`).
CouponEntered = Annotated[str, Meta(min_length=1, max_length=64)]
_Time = Annotated[str, Meta(min_length=1, max_length=40, description="RFC 3339")]
_Count = Annotated[int, Meta(ge=1, le=10**12)]


class PromotionCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    code: CouponCode | None = None  # 3-40 of A-Z a-z 0-9 _ -
    percent_off_bps: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    amount_off: Annotated[dict[Annotated[str, Meta(pattern=r"^[A-Z]{2,16}$")], Annotated[int, Meta(ge=1, le=10**12)]],
                          Meta(min_length=1, max_length=50)] | None = None
    product_ids: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=100)] = []
    categories: Annotated[list[ProductCategory], Meta(max_length=4)] = []
    starts_at: _Time | None = None
    ends_at: _Time | None = None
    redemptions_max: _Count | None = None
    redemptions_per_player_max: _Count | None = None
    units_max: _Count | None = None
    stackable: bool = False
    active: bool = True


class PromotionUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    active: bool | UnsetType = UNSET
    ends_at: _Time | None | UnsetType = UNSET


class PromotionView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    code: str | None
    percent_off_bps: int | None
    amount_off: dict[str, int] | None
    product_ids: list[str]
    categories: list[str]
    starts_at: str | None
    ends_at: str | None
    redemptions_max: int | None
    redemptions_per_player_max: int | None
    units_max: int | None
    units_used: int  # units of the orders holding or having taken it (flash sales count these)
    stackable: bool
    redemptions: int  # orders holding (pending) or having taken (paid) it
    active: bool
    created_at: str


class PromotionList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[PromotionView]
    has_more: bool
    next_cursor: str | None


def _time(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339(ms)


def promotion_view(row: Row) -> PromotionView:
    assert row["redemptions"] >= 0 and row["units_used"] >= 0
    return PromotionView(
        id=row["id"], name=row["name"], code=row["code"], percent_off_bps=row["percent_off_bps"],
        amount_off=msgspec.json.decode(row["amount_off"]) if row["amount_off"] else None,
        product_ids=msgspec.json.decode(row["product_ids"]), categories=msgspec.json.decode(row["categories"]),
        starts_at=_time(row["starts_at_ms"]), ends_at=_time(row["ends_at_ms"]), redemptions_max=row["redemptions_max"],
        redemptions_per_player_max=row["redemptions_per_player_max"], units_max=row["units_max"],
        units_used=row["units_used"], stackable=bool(row["stackable"]), redemptions=row["redemptions"],
        active=bool(row["active"]), created_at=format_rfc3339(row["created_at_ms"]))


def _parse_time(text: str | None, *, param: str) -> int | None:
    if text is None:
        return None
    try:
        ms = parse_rfc3339(text)
    except ValueError:
        raise InvalidRequest(f"{param} is an RFC 3339 time.", code="time_invalid", param=param) from None
    if ms < 0:
        raise InvalidRequest(f"{param} is before 1970.", code="time_invalid", param=param)
    return ms


def _check_discount(command: PromotionCreate) -> None:
    if command.percent_off_bps is not None and command.amount_off is not None:
        raise InvalidRequest("Give either percent_off_bps or amount_off, not both.", code="discount_both_given",
                             param="amount_off")
    if command.percent_off_bps is None and command.amount_off is None:
        raise InvalidRequest("Give percent_off_bps or amount_off.", code="discount_missing", param="percent_off_bps")
    for code in command.amount_off or {}:
        if not is_iso_currency(code):
            raise CurrencyNotSupported(f"'{code}' is not a supported ISO 4217 currency", param=f"amount_off.{code}")


class Promotions:
    def __init__(self, *, db: Database, clock: Clock, idempotency: Idempotency) -> None:
        self._db = db
        self._clock = clock
        self._idempotency = idempotency

    # -- CRUD ----------------------------------------------------------------------------------
    async def create(self, *, merchant_id: str, command: PromotionCreate, idem: IdempotencyRequest | None) -> Outcome:
        _check_discount(command)
        starts_ms = _parse_time(command.starts_at, param="starts_at")
        ends_ms = _parse_time(command.ends_at, param="ends_at")
        if starts_ms is not None and ends_ms is not None and ends_ms <= starts_ms:
            raise InvalidRequest("ends_at must be after starts_at.", code="promotion_window_invalid", param="ends_at")

        def transaction(tx: Tx) -> PromotionView:
            code_key = command.code.upper() if command.code else None
            if code_key and store.code_taken(tx, merchant_id=merchant_id, code_key=code_key):
                raise Conflict(f"A promotion with code '{command.code}' exists (codes ignore case).",
                               code="coupon_code_exists", param="code")
            for index, product_id in enumerate(command.product_ids):
                if catalog_store.get_product_tx(tx, merchant_id=merchant_id, product_id=product_id) is None:
                    raise NotFound(f"No such product: '{product_id}'", param=f"product_ids[{index}]")
            promotion_id = new_id("prm")
            store.insert_promotion(tx, {
                "id": promotion_id, "merchant_id": merchant_id, "name": command.name, "code": command.code,
                "code_key": code_key, "percent_off_bps": command.percent_off_bps,
                "amount_off": msgspec.json.encode(command.amount_off).decode() if command.amount_off else None,
                "product_ids": msgspec.json.encode(sorted(set(command.product_ids))).decode(),
                "categories": msgspec.json.encode(sorted({c.value for c in command.categories})).decode(),
                "starts_at_ms": starts_ms, "ends_at_ms": ends_ms, "redemptions_max": command.redemptions_max,
                "redemptions_per_player_max": command.redemptions_per_player_max, "units_max": command.units_max,
                "stackable": int(command.stackable), "active": int(command.active), "created_at_ms": self._clock.now_ms(),
            })
            return promotion_view(store.get_promotion_tx(tx, merchant_id=merchant_id, promotion_id=promotion_id))

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=201)

    async def update(self, *, merchant_id: str, promotion_id: str, command: PromotionUpdate,
                     idem: IdempotencyRequest | None) -> Outcome:
        fields: dict = {}
        if command.active is not UNSET:
            fields["active"] = int(command.active)
        if command.ends_at is not UNSET:
            fields["ends_at_ms"] = _parse_time(command.ends_at, param="ends_at")

        def transaction(tx: Tx) -> PromotionView:
            row = store.get_promotion_tx(tx, merchant_id=merchant_id, promotion_id=promotion_id)
            if row is None:
                raise NotFound(f"No such promotion: '{promotion_id}'", param="id")
            ends_ms = fields.get("ends_at_ms")
            if ends_ms is not None and row["starts_at_ms"] is not None and ends_ms <= row["starts_at_ms"]:
                raise InvalidRequest("ends_at must be after starts_at.", code="promotion_window_invalid", param="ends_at")
            if fields:
                store.update_promotion(tx, promotion_id=promotion_id, fields=fields, now_ms=self._clock.now_ms())
            return promotion_view(store.get_promotion_tx(tx, merchant_id=merchant_id, promotion_id=promotion_id))

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=200)

    async def get(self, *, merchant_id: str, promotion_id: str) -> PromotionView:
        row = await store.get_promotion(self._db, merchant_id=merchant_id, promotion_id=promotion_id)
        if row is None:
            raise NotFound(f"No such promotion: '{promotion_id}'", param="id")
        return promotion_view(row)

    async def list(self, *, merchant_id: str, after_id: str | None, limit: int,
                   active: bool | None) -> tuple[list[PromotionView], bool]:
        rows = await store.list_promotions(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1,
                                           active=active)
        return page_of(rows, limit, promotion_view)

    # -- pricing and redemption (inside the order's write transaction) ---------------------------
    def price_tx(self, tx: Tx, *, merchant_id: str, player_id: str, lines: list[Mapping], currency: str,
                 coupon: str | None) -> Pricing:
        """The discounts of an order's lines (checks only: it writes nothing). Raises for a
        coupon that is unknown or inactive (400), used up (409) or takes nothing off (400)."""
        now_ms = self._clock.now_ms()
        to_price = [LineToPrice(product_id=line["product_id"], category=line["category"], quantity=line["quantity"],
                                unit_amount=line["unit_amount"]) for line in lines]
        rules: list[PromotionRule] = []
        if coupon is not None:
            rules.append(self._coupon_rule(tx, merchant_id=merchant_id, player_id=player_id, coupon=coupon,
                                           lines=to_price, currency=currency, now_ms=now_ms))
        for row in store.automatic_promotions_tx(tx, merchant_id=merchant_id, now_ms=now_ms, limit=AUTOMATIC_PROMOTIONS_MAX):
            rule = self._usable_rule(tx, row, player_id=player_id)
            if rule is not None:  # an automatic promotion that is used up simply stops applying
                rules.append(rule)
        pricing = price_lines(to_price, rules, currency=currency)
        assert len(pricing.line_discounts) == len(lines)
        return pricing

    def _coupon_rule(self, tx: Tx, *, merchant_id: str, player_id: str, coupon: str, lines: list[LineToPrice],
                     currency: str, now_ms: int) -> PromotionRule:
        row = store.promotion_by_code_tx(tx, merchant_id=merchant_id, code_key=coupon.upper(), now_ms=now_ms)
        if row is None:
            raise CouponInvalid(f"No active promotion has the code '{coupon}'.", param="coupon")
        rule = self._usable_rule(tx, row, player_id=player_id)
        if rule is None:
            raise CouponExhausted(f"The coupon '{coupon}' has been used up.", param="coupon")
        base = [line.unit_amount * line.quantity for line in lines]
        if sum(rule_discounts(rule, lines, base, currency=currency)[0]) == 0:
            if rule.units_left is not None and any(rule.in_scope(line) for line in lines):
                raise CouponExhausted(f"The coupon '{coupon}' has too few units left for this order.", param="coupon")
            raise CouponNotApplicable(f"The coupon '{coupon}' takes nothing off this order.", param="coupon")
        return rule

    @staticmethod
    def _usable_rule(tx: Tx, row: Row, *, player_id: str) -> PromotionRule | None:
        """The promotion as a pricing rule, or None when its limits are used up for this player."""
        if row["redemptions_max"] is not None and row["redemptions"] >= row["redemptions_max"]:
            return None
        units_left = None if row["units_max"] is None else row["units_max"] - row["units_used"]
        if units_left is not None and units_left <= 0:
            return None
        per_player_max = row["redemptions_per_player_max"]
        if per_player_max is not None and store.player_redemptions_tx(
                tx, promotion_id=row["id"], player_id=player_id) >= per_player_max:
            return None
        return PromotionRule(
            id=row["id"], percent_off_bps=row["percent_off_bps"],
            amount_off=msgspec.json.decode(row["amount_off"]) if row["amount_off"] else {},
            product_ids=frozenset(msgspec.json.decode(row["product_ids"])),
            categories=frozenset(msgspec.json.decode(row["categories"])), stackable=bool(row["stackable"]),
            units_left=units_left)

    @staticmethod
    def hold_tx(tx: Tx, *, order_id: str, player_id: str, pricing: Pricing, now_ms: int) -> None:
        """The order holds one redemption (and its units) of every promotion applied to it."""
        for position, applied in enumerate(pricing.applied):
            store.hold(tx, order_id=order_id, position=position, promotion_id=applied.promotion_id, player_id=player_id,
                       discount=applied.discount, units=applied.units, now_ms=now_ms)

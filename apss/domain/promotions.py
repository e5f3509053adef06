"""Promotion rules, no I/O: which promotions apply to which lines, how much each takes off, and
how they stack.

- Scope: a promotion applies to a line when its `product_ids` name the line's product or its
  `categories` name the product's category (either matches); with neither, to every line.
- Amount: `percent_off_bps` takes `line amount * bps / 10000` off the line, rounded half-even
  to the currency's minor unit (the line amount is the one left by the promotions applied
  before); `amount_off` takes its amount in the order's currency off each unit of the line
  (`amount * quantity`), and a promotion without an amount in that currency takes nothing.
  No line ever goes below zero: a discount is at most what is left of the line.
- Flash-sale units (`units_max`): a line is discounted only if all its units fit in the units
  left; the units a promotion discounts are counted against it.
- Stacking: of the promotions that are not stackable, the one that takes the most off the order
  on its own applies (ties: the older one); then every stackable one, oldest first (ids sort by
  creation time), each on what the previous ones left. A promotion that takes nothing off is not
  applied, and is not redeemed.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from apss.errors import Conflict, InvalidRequest

__all__ = [
    "AppliedPromotion",
    "CouponExhausted",
    "CouponInvalid",
    "CouponNotApplicable",
    "LineToPrice",
    "Pricing",
    "PromotionRule",
    "percent_of",
    "price_lines",
    "rule_discounts",
]

BPS = 10_000


class CouponInvalid(InvalidRequest):
    """No active promotion of this merchant has this code now (unknown, inactive, not started, ended)."""

    code = "coupon_invalid"


class CouponNotApplicable(InvalidRequest):
    """The coupon takes nothing off this order (no line in its scope, no amount in its currency)."""

    code = "coupon_not_applicable"


class CouponExhausted(Conflict):
    """The coupon's redemptions, the player's redemptions of it, or its units are used up."""

    code = "coupon_exhausted"


class PromotionRule(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    percent_off_bps: int | None
    amount_off: dict[str, int]
    product_ids: frozenset[str]
    categories: frozenset[str]
    stackable: bool
    units_left: int | None  # None: no flash-sale units

    def __post_init__(self) -> None:
        assert (self.percent_off_bps is None) != (not self.amount_off), self.id
        assert self.units_left is None or self.units_left >= 0

    def in_scope(self, line: LineToPrice) -> bool:
        if not self.product_ids and not self.categories:
            return True
        return line.product_id in self.product_ids or line.category in self.categories


class LineToPrice(msgspec.Struct, frozen=True, kw_only=True):
    product_id: str
    category: str
    quantity: int
    unit_amount: int


class AppliedPromotion(msgspec.Struct, frozen=True, kw_only=True):
    promotion_id: str
    discount: int
    units: int


class Pricing(msgspec.Struct, frozen=True, kw_only=True):
    line_discounts: list[int]
    applied: list[AppliedPromotion]

    @property
    def discount(self) -> int:
        return sum(self.line_discounts)


def percent_of(amount: int, bps: int) -> int:
    """`amount * bps / 10000`, rounded half-even (integers only: never float)."""
    assert amount >= 0 and 0 <= bps <= BPS
    return int((Decimal(amount) * bps / BPS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def rule_discounts(rule: PromotionRule, lines: list[LineToPrice], remaining: list[int], *,
                   currency: str) -> tuple[list[int], int]:
    """What `rule` takes off each line, given what is left of each line: (discounts, units)."""
    assert len(lines) == len(remaining) and all(r >= 0 for r in remaining)
    discounts, units = [0] * len(lines), 0
    for index, line in enumerate(lines):
        if not rule.in_scope(line):
            continue
        if rule.units_left is not None and units + line.quantity > rule.units_left:
            continue
        if rule.percent_off_bps is not None:
            off = percent_of(remaining[index], rule.percent_off_bps)
        else:
            off = min(remaining[index], rule.amount_off.get(currency, 0) * line.quantity)
        if off > 0:
            discounts[index], units = off, units + line.quantity
    assert all(0 <= d <= r for d, r in zip(discounts, remaining, strict=True))
    return discounts, units


def price_lines(lines: list[LineToPrice], rules: list[PromotionRule], *, currency: str) -> Pricing:
    """Apply the stacking rule (module docstring) to the candidate `rules`."""
    remaining = [line.unit_amount * line.quantity for line in lines]
    base = list(remaining)
    by_age = sorted(rules, key=lambda r: r.id)
    exclusive = [r for r in by_age if not r.stackable]
    chosen: list[PromotionRule] = []
    if exclusive:  # max() keeps the first of equal values: the older promotion wins a tie
        chosen.append(max(exclusive, key=lambda r: sum(rule_discounts(r, lines, base, currency=currency)[0])))
    chosen += [r for r in by_age if r.stackable]
    applied: list[AppliedPromotion] = []
    for rule in chosen:
        discounts, units = rule_discounts(rule, lines, remaining, currency=currency)
        if sum(discounts) == 0:
            continue
        remaining = [r - d for r, d in zip(remaining, discounts, strict=True)]
        applied.append(AppliedPromotion(promotion_id=rule.id, discount=sum(discounts), units=units))
    line_discounts = [b - r for b, r in zip(base, remaining, strict=True)]
    assert sum(line_discounts) == sum(a.discount for a in applied) and all(r >= 0 for r in remaining)
    return Pricing(line_discounts=line_discounts, applied=applied)

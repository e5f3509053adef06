"""Catalog rules: categories, grants and their defaults, what a purchase delivers."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.errors import InvalidRequest

__all__ = [
    "CurrencyGrant",
    "EntitlementGrant",
    "GameGrant",
    "Grant",
    "ItemGrant",
    "MembershipGrant",
    "ProductCategory",
    "SKU_PATTERN",
    "default_grants",
]

SKU_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
Sku = Annotated[str, Meta(pattern=SKU_PATTERN)]
VirtualCurrency = Annotated[str, Meta(pattern=r"^[A-Z][A-Z0-9_]{1,15}$")]
GRANT_QUANTITY_MAX = 1_000_000_000


class ProductCategory(enum.StrEnum):
    ITEM = "item"
    CURRENCY_PACK = "currency_pack"
    MEMBERSHIP = "membership"
    DIGITAL_CONTENT = "digital_content"


class _Grant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class ItemGrant(_Grant, tag="item"):
    sku: Sku
    quantity: Annotated[int, Meta(ge=1, le=GRANT_QUANTITY_MAX)] = 1


class CurrencyGrant(_Grant, tag="currency"):
    currency: VirtualCurrency
    amount: Annotated[int, Meta(ge=1, le=GRANT_QUANTITY_MAX)]


class MembershipGrant(_Grant, tag="membership"):
    sku: Sku
    duration_days: Annotated[int, Meta(ge=1, le=3660)] = 30


class EntitlementGrant(_Grant, tag="entitlement"):
    sku: Sku


class GameGrant(_Grant, tag="game"):
    """Delivered by the game itself: the order goes `paid -> delivering`, a delivery is pushed
    to the game (webhook `delivery.pending`, or polled) and `fulfilled` when the game acks."""

    sku: Sku
    quantity: Annotated[int, Meta(ge=1, le=GRANT_QUANTITY_MAX)] = 1
    data: Annotated[dict[Annotated[str, Meta(max_length=40)], Annotated[str, Meta(max_length=500)]], Meta(max_length=20)] = {}


Grant = ItemGrant | CurrencyGrant | MembershipGrant | EntitlementGrant | GameGrant


def default_grants(category: ProductCategory, sku: str, grants: list[Grant] | None) -> list[Grant]:
    """What one unit delivers: the grants given, or the category's default (API.md)."""
    if grants:
        return list(grants)
    if category is ProductCategory.ITEM:
        return [ItemGrant(sku=sku, quantity=1)]
    if category is ProductCategory.MEMBERSHIP:
        return [MembershipGrant(sku=sku, duration_days=30)]
    if category is ProductCategory.DIGITAL_CONTENT:
        return [EntitlementGrant(sku=sku)]
    assert category is ProductCategory.CURRENCY_PACK
    raise InvalidRequest(
        "a currency_pack must name its grant, e.g. {\"type\": \"currency\", \"currency\": \"GEMS\", \"amount\": 500}",
        code="currency_pack_grant_required",
        param="grants",
    )



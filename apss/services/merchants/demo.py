"""The demo store seeded on a fresh database: a test merchant with products of each category, a
monthly plan (README: "A month of renewals in seconds") and a welcome coupon."""

from __future__ import annotations

from apss.domain.catalog import CurrencyGrant, ProductCategory
from apss.domain.subscriptions import Billing, Interval
from apss.services.catalog.products import Catalog, ProductCreate
from apss.services.merchants.keys import Merchants
from apss.services.promotions.promotions import PromotionCreate, Promotions
from apss.services.views import MerchantCreatedView
from apss.store import merchants as store
from apss.store.db import Database, Tx

__all__ = ["seed_demo"]

_SEEDED_SETTING = "demo_seeded"

_PRODUCTS = [
    ProductCreate(sku="sword_of_dawn", name="Sword of Dawn", category=ProductCategory.ITEM,
                  prices={"USD": 499, "EUR": 459, "JPY": 750}, stock=100),
    ProductCreate(sku="dragon_egg", name="Dragon Egg (limited)", category=ProductCategory.ITEM,
                  prices={"USD": 1999, "EUR": 1899}, stock=10, purchase_limit=1),
    ProductCreate(sku="gems_500", name="500 Gems", category=ProductCategory.CURRENCY_PACK, prices={"USD": 499, "CNY": 3000},
                  grants=[CurrencyGrant(currency="GEMS", amount=500)]),
    ProductCreate(sku="gems_1200", name="1200 Gems", category=ProductCategory.CURRENCY_PACK, prices={"USD": 999, "CNY": 6800},
                  grants=[CurrencyGrant(currency="GEMS", amount=1200)]),
    ProductCreate(sku="vip_month", name="VIP Membership (30 days)", category=ProductCategory.MEMBERSHIP,
                  prices={"USD": 999, "EUR": 899}),
    ProductCreate(sku="battle_pass_s1", name="Battle Pass Season 1", category=ProductCategory.MEMBERSHIP,
                  prices={"USD": 1499}),
    # The plan: sold by subscription, renewed every month on the saved sandbox card.
    ProductCreate(sku="battle_pass_monthly", name="Battle Pass (monthly)", category=ProductCategory.MEMBERSHIP,
                  prices={"USD": 499, "EUR": 459}, billing=Billing(interval=Interval.MONTH)),
    ProductCreate(sku="soundtrack", name="Original Soundtrack", category=ProductCategory.DIGITAL_CONTENT,
                  prices={"USD": 799}),
    ProductCreate(sku="artbook", name="Digital Artbook", category=ProductCategory.DIGITAL_CONTENT,
                  prices={"USD": 599, "EUR": 549}),
]

# 10% off one-off purchases (not memberships: plans renew at their own price), once per player.
_WELCOME = PromotionCreate(name="Welcome 10% off", code="WELCOME10", percent_off_bps=1000,
                           categories=[ProductCategory.ITEM, ProductCategory.CURRENCY_PACK,
                                       ProductCategory.DIGITAL_CONTENT],
                           redemptions_max=1000, redemptions_per_player_max=1)


async def seed_demo(*, db: Database, merchants: Merchants, catalog: Catalog,
                    promotions: Promotions) -> MerchantCreatedView | None:
    """Seed once per database; returns the new merchant (with its key, shown only now)."""

    def claim(tx: Tx) -> bool:
        if store.get_setting_tx(tx, _SEEDED_SETTING) is not None:
            return False
        store.set_setting(tx, _SEEDED_SETTING, "1")
        return True

    if not await db.write(claim):
        return None
    merchant = await merchants.create(name="Demo Studio", mode="test")
    for product in _PRODUCTS:
        outcome = await catalog.create(merchant_id=merchant.id, command=product, idem=None)
        assert outcome.status == 201
    outcome = await promotions.create(merchant_id=merchant.id, command=_WELCOME, idem=None)
    assert outcome.status == 201
    return merchant

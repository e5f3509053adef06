"""Quotes: what an order would cost now, with the promotions that would apply, reserving
nothing. Priced by the same code as an order (Checkout.price_tx), on the writer's state, so a
quote and the order that follows it a moment later agree unless a limit ran out in between."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from apss.services.merchants.keys import Merchant
from apss.services.orders.checkout import Checkout, OrderLine, PlayerId
from apss.services.promotions.promotions import CouponEntered
from apss.store.db import Database, Tx

__all__ = ["QuoteCreate", "QuoteItemView", "QuoteView", "Quotes"]


class QuoteCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    player_id: PlayerId
    items: Annotated[list[OrderLine], Meta(min_length=1, max_length=1000)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{2,16}$")]
    coupon: CouponEntered | None = None


class QuoteItemView(msgspec.Struct, frozen=True, kw_only=True):
    product_id: str
    quantity: int
    unit_amount: int
    discount: int
    amount: int


class QuoteView(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    subtotal: int
    discount: int
    amount: int
    items: list[QuoteItemView]
    promotions: list[str]


class Quotes:
    def __init__(self, *, db: Database, checkout: Checkout) -> None:
        self._db = db
        self._checkout = checkout

    async def quote(self, *, merchant: Merchant, command: QuoteCreate) -> QuoteView:
        self._checkout.check_lines(command)

        def transaction(tx: Tx) -> QuoteView:  # reads only: a quote writes nothing
            changes_before = tx.changes
            lines, pricing = self._checkout.price_tx(tx, merchant=merchant, command=command)
            assert tx.changes == changes_before, "a quote reserves nothing"
            items = [QuoteItemView(product_id=line["product_id"], quantity=line["quantity"], unit_amount=line["unit_amount"],
                                   discount=line["discount"], amount=line["amount"]) for line in lines]
            amount = sum(item.amount for item in items)
            return QuoteView(currency=command.currency, subtotal=amount + pricing.discount, discount=pricing.discount,
                             amount=amount, items=items, promotions=[a.promotion_id for a in pricing.applied])

        return await self._db.write(transaction)

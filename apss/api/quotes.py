"""Quotes: an order's price with its promotions, reserving nothing."""

from __future__ import annotations

from litestar import Controller, post

from apss.api.common import Services
from apss.services.merchants.keys import Merchant
from apss.services.promotions.quotes import QuoteCreate, QuoteView

__all__ = ["QuoteController"]


class QuoteController(Controller):
    path = "/v1/quotes"
    tags = ["promotions"]
    security = [{"bearer": []}]

    @post("/", status_code=200, summary="Price an order with the promotions that apply now; reserves nothing")
    async def create(self, data: QuoteCreate, merchant: Merchant, svc: Services) -> QuoteView:
        return await svc.quotes.quote(merchant=merchant, command=data)

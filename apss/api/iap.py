"""In-app purchases (API.md "More channels"): a store purchase the game's app hands over,
verified (offline for the App Store, through the Play Developer API for Google Play) and
delivered once."""

from __future__ import annotations

from litestar import Controller, Response, post
from litestar.openapi.datastructures import ResponseSpec

from apss.api.common import Services
from apss.services.iap.purchases import (
    GooglePurchaseIn,
    StoreOrderView,
    StorePurchaseIn,
)
from apss.services.merchants.keys import Merchant

__all__ = ["IapController"]


class IapController(Controller):
    path = "/v1/iap"
    tags = ["iap"]
    security = [{"bearer": []}]

    @post("/apple", status_code=201, summary="Deliver an App Store purchase (StoreKit 2 signed transaction), once",
          description="201: the transaction's new order, paid through channel `apple` and fulfilled. The same "
                      "transaction again answers 200 with `seen_before: true` and the order of the first time; "
                      "nothing is delivered twice. The transaction id is the request's natural idempotency key.",
          responses={200: ResponseSpec(data_container=StoreOrderView,
                                       description="Seen before: the order of the first time, `seen_before: true`.")})
    async def apple(self, data: StorePurchaseIn, merchant: Merchant, svc: Services) -> Response[StoreOrderView]:
        status, body = await svc.store_purchases.purchase(merchant=merchant, channel_name="apple", command=data)
        return Response(content=body, status_code=status, media_type="application/json")

    @post("/google", status_code=201, summary="Deliver a Google Play purchase (purchase token), once",
          description="The purchase is read from the Play Developer API (a product of category `membership` as a "
                      "subscription, any other as a one-time product) and must be purchased, for the channel's "
                      "`package_name` and this `product_id` (the product's `sku`). 201: the purchase's new order, "
                      "paid through channel `google` at the product's price in the channel's `currency`, fulfilled, "
                      "then acknowledged to Google. The same purchase again answers 200 with `seen_before: true` "
                      "and the order of the first time; nothing is delivered twice.",
          responses={200: ResponseSpec(data_container=StoreOrderView,
                                       description="Seen before: the order of the first time, `seen_before: true`.")})
    async def google(self, data: GooglePurchaseIn, merchant: Merchant, svc: Services) -> Response[StoreOrderView]:
        status, body = await svc.store_purchases.purchase(merchant=merchant, channel_name="google", command=data)
        return Response(content=body, status_code=status, media_type="application/json")

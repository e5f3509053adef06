"""In-app purchases (API.md "More channels"): a store transaction the game's app hands over,
verified offline and delivered once."""

from __future__ import annotations

from litestar import Controller, Response, post
from litestar.openapi.datastructures import ResponseSpec

from apss.api.common import Services
from apss.services.iap.purchases import StoreOrderView, StorePurchaseIn
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

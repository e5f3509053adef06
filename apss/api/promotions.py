"""Promotions: automatic discounts, coupons and flash sales."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, patch, post

from apss.api.common import (
    Cursor,
    Limit,
    Services,
    idempotency_request,
    list_response,
    outcome_response,
)
from apss.services.merchants.keys import Merchant
from apss.services.promotions.promotions import (
    PromotionCreate,
    PromotionList,
    PromotionUpdate,
    PromotionView,
)

__all__ = ["PromotionController"]


class PromotionController(Controller):
    path = "/v1/promotions"
    tags = ["promotions"]
    security = [{"bearer": []}]

    @post("/", summary="Create a promotion: automatic, or a coupon with a code; a flash sale with units_max", idempotent=True)
    async def create(self, data: PromotionCreate, request: Request, merchant: Merchant,
                     svc: Services) -> Response[PromotionView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.promotions.create(merchant_id=merchant.id, command=data, idem=idem))

    @get("/", summary="List promotions, newest first")
    async def list_promotions(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                              active: bool | None = None) -> Response[PromotionList]:
        items, has_more = await svc.promotions.list(merchant_id=merchant.id, after_id=cursor, limit=limit, active=active)
        return list_response(items, has_more)

    @get("/{promotion_id:str}", summary="Retrieve a promotion")
    async def retrieve(self, promotion_id: str, merchant: Merchant, svc: Services) -> PromotionView:
        return await svc.promotions.get(merchant_id=merchant.id, promotion_id=promotion_id)

    @patch("/{promotion_id:str}", summary="Activate or deactivate a promotion, or move its end", idempotent=True)
    async def update(self, promotion_id: str, data: PromotionUpdate, request: Request, merchant: Merchant,
                     svc: Services) -> Response[PromotionView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.promotions.update(merchant_id=merchant.id, promotion_id=promotion_id,
                                                            command=data, idem=idem))

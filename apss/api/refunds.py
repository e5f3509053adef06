"""Refunds of an order."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post

from apss.api.common import (
    Services,
    idempotency_request,
    list_response,
    outcome_response,
)
from apss.services.merchants.keys import Merchant
from apss.services.refunds.refunds import RefundCreate, RefundList, RefundView

__all__ = ["RefundController"]


class RefundController(Controller):
    tags = ["refunds"]
    security = [{"bearer": []}]

    @post("/v1/orders/{order_id:str}/refunds", summary="Refund an order in full or in part (several partials allowed)", idempotent=True)
    async def create(self, order_id: str, data: RefundCreate, request: Request, merchant: Merchant,
                     svc: Services) -> Response[RefundView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.refunds.create(merchant=merchant, order_id=order_id, command=data, idem=idem))

    @get("/v1/orders/{order_id:str}/refunds", summary="The order's refunds")
    async def for_order(self, order_id: str, merchant: Merchant, svc: Services) -> Response[RefundList]:
        await svc.orders.get(merchant_id=merchant.id, order_id=order_id)  # 404 for another merchant's order
        return list_response(await svc.refunds.for_order(merchant_id=merchant.id, order_id=order_id), False)

    @get("/v1/refunds/{refund_id:str}", summary="Retrieve a refund")
    async def retrieve(self, refund_id: str, merchant: Merchant, svc: Services) -> RefundView:
        return await svc.refunds.get(merchant_id=merchant.id, refund_id=refund_id)

"""Orders: create (reserve stock, create the payment), read, list, cancel, events."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from apss.api import audit
from apss.api.common import (
    Cursor,
    Limit,
    Services,
    idempotency_request,
    list_response,
    outcome_response,
)
from apss.domain.orders import OrderStatus
from apss.services.merchants.keys import Merchant
from apss.services.orders.checkout import OrderCreate
from apss.services.views import OrderEventList, OrderList, OrderView

__all__ = ["OrderController"]


class OrderController(Controller):
    path = "/v1/orders"
    tags = ["orders"]
    security = [{"bearer": []}]

    @post("/", summary="Create an order: prices it, reserves stock, creates its payment", idempotent=True)
    async def create(self, data: OrderCreate, request: Request, merchant: Merchant, svc: Services) -> Response[OrderView]:
        # An erased player's id is stored (and hashed) as the pseudonym its records carry.
        data = msgspec.structs.replace(data, player_id=svc.privacy.resolve(merchant.id, data.player_id))
        idem = idempotency_request(request, data)
        return outcome_response(await svc.checkout.create(merchant=merchant, command=data, idem=idem,
                                                          audit_tx=audit.in_transaction(request.scope)))

    @get("/", summary="List orders, newest first")
    async def list_orders(
        self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
        status: OrderStatus | None = None,
        player_id: Annotated[str | None, Parameter(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")] = None,
    ) -> Response[OrderList]:
        items, has_more = await svc.orders.list(merchant_id=merchant.id, after_id=cursor, limit=limit,
                                                  status=status.value if status else None,
                                                  player_id=svc.privacy.resolve(merchant.id, player_id) if player_id else None)
        return list_response(items, has_more)

    @get("/{order_id:str}", summary="Retrieve an order")
    async def retrieve(self, order_id: str, merchant: Merchant, svc: Services) -> OrderView:
        return await svc.orders.get(merchant_id=merchant.id, order_id=order_id)

    @post("/{order_id:str}/cancel", status_code=200, summary="Cancel a pending order; releases its stock", idempotent=True)
    async def cancel(self, order_id: str, request: Request, merchant: Merchant, svc: Services) -> Response[OrderView]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.checkout.cancel(merchant=merchant, order_id=order_id, idem=idem))

    @get("/{order_id:str}/events", summary="The order's state changes with their causes")
    async def events(self, order_id: str, merchant: Merchant, svc: Services) -> Response[OrderEventList]:
        items = await svc.orders.events(merchant_id=merchant.id, order_id=order_id)
        return list_response(items, False)

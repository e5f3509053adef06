"""Products: catalog and stock."""

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
from apss.services.catalog.products import ProductCreate, ProductUpdate
from apss.services.merchants.keys import Merchant
from apss.services.views import ProductList, ProductView

__all__ = ["ProductController"]


class ProductController(Controller):
    path = "/v1/products"
    tags = ["products"]
    security = [{"bearer": []}]

    @post("/", summary="Create a product", idempotent=True)
    async def create(self, data: ProductCreate, request: Request, merchant: Merchant, svc: Services) -> Response[ProductView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.catalog.create(merchant_id=merchant.id, command=data, idem=idem))

    @get("/", summary="List products, newest first")
    async def list_products(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                            active: bool | None = None) -> Response[ProductList]:
        items, has_more = await svc.catalog.list(merchant_id=merchant.id, after_id=cursor, limit=limit, active=active)
        return list_response(items, has_more)

    @get("/{product_id:str}", summary="Retrieve a product")
    async def retrieve(self, product_id: str, merchant: Merchant, svc: Services) -> ProductView:
        return await svc.catalog.get(merchant_id=merchant.id, product_id=product_id)

    @patch("/{product_id:str}", summary="Update fields, set stock, or adjust stock atomically (stock_adjust)", idempotent=True)
    async def update(self, product_id: str, data: ProductUpdate, request: Request, merchant: Merchant,
                     svc: Services) -> Response[ProductView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.catalog.update(merchant_id=merchant.id, product_id=product_id, command=data, idem=idem))

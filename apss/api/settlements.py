"""Settlement: the merchant's batches (list, one with its lines, its lines as CSV), its schedule,
settling on demand (manual cycle), and the admin's payout mark."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, Response, get, post, put
from litestar.di import Provide
from litestar.params import Parameter

from apss.api.common import (
    Cursor,
    Limit,
    Services,
    admin_guard,
    idempotency_request,
    list_response,
    outcome_response,
)
from apss.services.merchants.keys import Merchant
from apss.services.money.settlement import (
    PayoutIn,
    ScheduleIn,
    ScheduleView,
    SettlementDetailView,
    SettlementList,
)

__all__ = ["AdminSettlementController", "SettlementController"]


class SettlementController(Controller):
    tags = ["settlements"]
    security = [{"bearer": []}]

    @get("/v1/settlements", summary="Settlement batches, newest first")
    async def list_settlements(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                               status: Literal["pending", "paid", "carried"] | None = None,
                               currency: Annotated[str | None, Parameter(max_length=3)] = None) -> Response[SettlementList]:
        items, has_more = await svc.settlements.list(merchant_id=merchant.id, after_id=cursor, limit=limit, status=status,
                                                     currency=currency)
        return list_response(items, has_more)

    @get("/v1/settlements/{settlement_id:str}", summary="A settlement batch with its lines")
    async def retrieve(self, settlement_id: str, merchant: Merchant, svc: Services) -> SettlementDetailView:
        return await svc.settlements.get(merchant_id=merchant.id, settlement_id=settlement_id)

    @get("/v1/settlements/{settlement_id:str}/lines.csv", summary="A settlement batch's lines as CSV",
         media_type="text/csv")
    async def lines_csv(self, settlement_id: str, merchant: Merchant, svc: Services) -> Response[bytes]:
        body = await svc.settlements.csv(merchant_id=merchant.id, settlement_id=settlement_id)
        return Response(content=body, status_code=200, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{settlement_id}.csv"'})

    @post("/v1/settlements/run", status_code=200,
          summary="Settle everything up to now (manual cycle); answers the batches made", idempotent=True)
    async def run(self, request: Request, merchant: Merchant, svc: Services) -> Response[SettlementList]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.settlements.settle_now(merchant_id=merchant.id, idem=idem))

    @get("/v1/account/settlement_schedule", summary="The settlement cycle, cut-off, minimum payout and reserve")
    async def schedule(self, merchant: Merchant, svc: Services) -> ScheduleView:
        return await svc.settlements.get_schedule(merchant.id)

    @put("/v1/account/settlement_schedule", summary="Set the settlement cycle, cut-off, minimum payout and reserve")
    async def set_schedule(self, data: ScheduleIn, merchant: Merchant, svc: Services) -> ScheduleView:
        return await svc.settlements.set_schedule(merchant.id, data)


class AdminSettlementController(Controller):
    tags = ["admin"]
    dependencies = {"admin": Provide(admin_guard)}
    security = [{"bearer": []}]

    @post("/v1/admin/settlements/{settlement_id:str}/paid", status_code=200,
          summary="Mark a pending settlement paid with its payout reference; posts the payout to the ledger (admin)")
    async def paid(self, settlement_id: str, data: PayoutIn, svc: Services, admin: None) -> SettlementDetailView:
        return await svc.settlements.mark_paid(settlement_id=settlement_id, payout_reference=data.payout_reference)

"""Risk control: the rule set, lists, an order's decisions, reviews."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import Parameter

from apss.api.common import (
    Cursor,
    Limit,
    Services,
    idempotency_request,
    list_response,
    outcome_response,
)
from apss.services.merchants.keys import Merchant
from apss.services.risk.control import (
    ListItemCreate,
    ListItemView,
    OrderRiskView,
    RulesPut,
    RulesView,
)
from apss.services.risk.precheck import PrecheckPut, PrecheckView

__all__ = ["OrderRiskController", "RiskController"]

ListName = Annotated[str, Parameter(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", description="blocked_players, "
                                    "blocked_ips, blocked_devices, blocked_emails, blocked_cards, or a merchant list")]


class RiskController(Controller):
    path = "/v1/risk"
    tags = ["risk"]
    security = [{"bearer": []}]

    @put("/rules", status_code=200, summary="Replace the whole rule set (each rule parsed and checked first)")
    async def put_rules(self, data: RulesPut, merchant: Merchant, svc: Services) -> RulesView:
        return await svc.risk.put_rules(merchant=merchant, command=data)

    @get("/rules", summary="The rule set in force (the defaults until one is set)")
    async def get_rules(self, merchant: Merchant, svc: Services) -> RulesView:
        return await svc.risk.get_rules(merchant=merchant)

    @post("/lists/{list_name:str}/items", summary="Add an entry to a list (emails stored as keyed hashes)", idempotent=True)
    async def add_item(self, list_name: str, data: ListItemCreate, request: Request, merchant: Merchant,
                       svc: Services) -> Response[ListItemView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.risk.add_item(merchant=merchant, list_name=list_name, command=data, idem=idem))

    @get("/lists/{list_name:str}/items", summary="A list's entries, newest first (emails masked)")
    async def list_items(self, list_name: str, merchant: Merchant, svc: Services, limit: Limit = 20,
                         cursor: Cursor = None) -> Response:
        items, has_more = await svc.risk.list_items(merchant=merchant, list_name=list_name, after_id=cursor, limit=limit)
        return list_response(items, has_more)

    @delete("/lists/{list_name:str}/items/{item_id:str}", status_code=200, summary="Remove a list entry")
    async def delete_item(self, list_name: str, item_id: str, merchant: Merchant, svc: Services) -> ListItemView:
        return await svc.risk.delete_item(merchant=merchant, list_name=list_name, item_id=item_id)

    @put("/precheck", status_code=200, summary="Set the pre-payment check URL (its signing secret is shown only here)")
    async def put_precheck(self, data: PrecheckPut, merchant: Merchant, svc: Services) -> PrecheckView:
        return await svc.prechecks.put(merchant=merchant, command=data)

    @get("/precheck", summary="The pre-payment check, if set")
    async def get_precheck(self, merchant: Merchant, svc: Services) -> PrecheckView:
        return await svc.prechecks.get(merchant=merchant)

    @delete("/precheck", status_code=200, summary="Remove the pre-payment check")
    async def delete_precheck(self, merchant: Merchant, svc: Services) -> dict:
        await svc.prechecks.delete(merchant=merchant)
        return {"deleted": True}

    @get("/reviews", summary="Orders held in review, newest first")
    async def reviews(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None) -> Response:
        items, has_more = await svc.risk.reviews(merchant=merchant, after_id=cursor, limit=limit)
        return list_response(items, has_more)

    @post("/reviews/{order_id:str}/approve", status_code=200, summary="Approve a held order: its goods are delivered", idempotent=True)
    async def approve(self, order_id: str, request: Request, merchant: Merchant, svc: Services) -> Response:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.risk.approve(merchant=merchant, order_id=order_id, idem=idem))

    @post("/reviews/{order_id:str}/reject", status_code=200,
          summary="Reject a held order: refunded in full, its units back in stock", idempotent=True)
    async def reject(self, order_id: str, request: Request, merchant: Merchant, svc: Services) -> Response:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.risk.reject(merchant=merchant, order_id=order_id, idem=idem))


class OrderRiskController(Controller):
    path = "/v1/orders"
    tags = ["risk"]
    security = [{"bearer": []}]

    @get("/{order_id:str}/risk", summary="The order's latest risk decision, earlier ones in history")
    async def order_risk(self, order_id: str, merchant: Merchant, svc: Services) -> OrderRiskView:
        return await svc.risk.order_risk(merchant=merchant, order_id=order_id)

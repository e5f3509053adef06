"""Money: ledger balances and the real-time summary (merchant), revenue share and refund policy,
and the admin's ledger check and manual adjustments."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post, put
from litestar.di import Provide
from litestar.params import Parameter
from msgspec import Meta

from apss.api.common import Services, admin_guard, list_response
from apss.clock import parse_rfc3339
from apss.errors import InvalidRequest, NotFound
from apss.services.merchants.keys import Merchant
from apss.services.money.finance import AdjustmentIn, FinanceIn
from apss.services.money.ledger import BalanceList, Finance, LedgerCheck, SummaryList

__all__ = ["AdminMoneyController", "MoneyController"]

Time = Annotated[str, Parameter(description="RFC 3339 UTC, e.g. 2026-11-25T00:00:00Z", max_length=40)]


class AdminAdjustmentIn(AdjustmentIn, frozen=True, kw_only=True, forbid_unknown_fields=True):
    merchant_id: Annotated[str, Meta(min_length=1, max_length=64)]


class AdjustmentView(msgspec.Struct, frozen=True, kw_only=True):
    reference: str


def _period(start: str, end: str) -> tuple[int, int]:
    try:
        from_ms, to_ms = parse_rfc3339(start), parse_rfc3339(end)
    except ValueError:
        raise InvalidRequest("from and to are RFC 3339 times.", code="time_invalid", param="from") from None
    if to_ms <= from_ms:
        raise InvalidRequest("to must be after from.", code="period_empty", param="to")
    return from_ms, to_ms


class MoneyController(Controller):
    tags = ["money"]
    security = [{"bearer": []}]

    @get("/v1/ledger/balances", summary="The merchant's ledger accounts and their balances")
    async def balances(self, merchant: Merchant, svc: Services) -> Response[BalanceList]:
        return list_response(await svc.ledger.balances(merchant.id), False)

    @get("/v1/reports/summary", summary="Gross, refunds, fees, commission, partner shares and net of a period, live")
    async def summary(self, merchant: Merchant, svc: Services, start: Annotated[str, Parameter(query="from")],
                      end: Annotated[str, Parameter(query="to")]) -> Response[SummaryList]:
        from_ms, to_ms = _period(start, end)
        return list_response(await svc.reports.summary(merchant_id=merchant.id, from_ms=from_ms, to_ms=to_ms), False)

    @get("/v1/account/finance", summary="Revenue share and refund clawback policy")
    async def finance(self, merchant: Merchant, svc: Services) -> Finance:
        return await svc.finance.get(merchant.id)

    @put("/v1/account/finance", summary="Set partner splits and the clawback policy (commission is the admin's)")
    async def set_finance(self, data: FinanceIn, merchant: Merchant, svc: Services) -> Finance:
        return await svc.finance.update(merchant_id=merchant.id, command=data, admin=False)


class AdminMoneyController(Controller):
    tags = ["admin"]
    dependencies = {"admin": Provide(admin_guard)}
    security = [{"bearer": []}]

    @put("/v1/merchants/{merchant_id:str}/finance", summary="Set a merchant's commission, splits and policy (admin)")
    async def set_finance(self, merchant_id: str, data: FinanceIn, svc: Services, admin: None) -> Finance:
        if svc.merchants.by_id(merchant_id) is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="merchant_id")
        return await svc.finance.update(merchant_id=merchant_id, command=data, admin=True)

    @get("/v1/admin/ledger/check", summary="Prove every ledger transaction balances and every balance equals its entries")
    async def check(self, svc: Services, admin: None) -> Response[LedgerCheck]:
        result = await svc.ledger.check()
        return Response(content=msgspec.json.encode(result), status_code=200 if result.ok else 409,
                        media_type="application/json")

    @post("/v1/admin/ledger/adjustments", status_code=201, summary="Post a manual adjustment with a reason (admin)")
    async def adjust(self, data: AdminAdjustmentIn, svc: Services, admin: None) -> AdjustmentView:
        if svc.merchants.by_id(data.merchant_id) is None:
            raise NotFound(f"No such merchant: '{data.merchant_id}'", param="merchant_id")
        command = AdjustmentIn(account=data.account, amount=data.amount, currency=data.currency, reason=data.reason)
        return AdjustmentView(reference=await svc.finance.adjust(merchant_id=data.merchant_id, command=command))

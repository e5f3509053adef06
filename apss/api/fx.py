"""Admin: the FX rate table (set rates, import a CSV file, list the rates in force, history)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, get, post, put
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.params import Parameter

from apss.api.common import Cursor, Limit, Services, admin_guard
from apss.services.money.fx import FxImportView, FxRateList, FxRatesIn

__all__ = ["FxController"]

_Currency = Annotated[str, Parameter(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
_CSV = ("CSV, UTF-8, header `base,quote,rate,as_of`; as_of is RFC 3339 (UTC); at most 10,000 rows. Example:\n\n"
        "    base,quote,rate,as_of\n    USD,EUR,0.9215,2026-11-25T15:04:05Z")


class FxController(Controller):
    path = "/v1/admin/fx_rates"
    tags = ["admin"]
    dependencies = {"admin": Provide(admin_guard)}
    security = [{"bearer": []}]

    @get("/", summary="List the latest rate of every pair (admin)")
    async def list_rates(self, svc: Services, admin: None) -> FxRateList:
        return FxRateList(data=await svc.fx.list(), has_more=False, next_cursor=None)

    @put("/", summary="Set rates (admin): one transaction, all or none; as_of defaults to now")
    async def set_rates(self, data: FxRatesIn, svc: Services, admin: None) -> FxRateList:
        return FxRateList(data=await svc.fx.set_rates(data.rates), has_more=False, next_cursor=None)

    @post("/import", status_code=200, csv_body=_CSV,
          summary="Import rates from a CSV file (admin): header base,quote,rate,as_of; all rows or none")
    async def import_csv(self, request: Request, svc: Services, admin: None) -> FxImportView:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "text/csv":
            raise HTTPException(status_code=415, detail="Send the file with Content-Type: text/csv.")
        return await svc.fx.import_csv(await request.body())

    @get("/{base:str}/{quote:str}", summary="A pair's rate history, newest first (admin)")
    async def history(self, base: _Currency, quote: _Currency, svc: Services, admin: None, limit: Limit = 20,
                      cursor: Cursor = None) -> FxRateList:
        items, has_more, next_cursor = await svc.fx.history(base=base, quote=quote, limit=limit, cursor=cursor)
        return FxRateList(data=items, has_more=has_more, next_cursor=next_cursor)

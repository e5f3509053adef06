"""Alerts: list and resolve."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.params import Parameter

from apss.api.common import Cursor, Limit, Services, list_response
from apss.services.merchants.keys import Merchant
from apss.services.notify.alerts import AlertList, AlertView

__all__ = ["AlertController"]


class AlertController(Controller):
    path = "/v1/alerts"
    tags = ["alerts"]
    security = [{"bearer": []}]

    @get("/", summary="Alerts, newest first")
    async def list_alerts(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                          resolved: bool | None = None,
                          kind: Annotated[str | None, Parameter(max_length=64)] = None) -> Response[AlertList]:
        items, has_more = await svc.alerts.list(merchant_id=merchant.id, after_id=cursor, limit=limit,
                                                resolved=resolved, kind=kind)
        return list_response(items, has_more)

    @post("/{alert_id:str}/resolve", status_code=200, summary="Mark an alert resolved")
    async def resolve(self, alert_id: str, merchant: Merchant, svc: Services) -> AlertView:
        return await svc.alerts.resolve(merchant_id=merchant.id, alert_id=alert_id)

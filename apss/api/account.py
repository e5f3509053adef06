"""The key's own merchant."""

from __future__ import annotations

from litestar import get

from apss.api.common import Services
from apss.services.merchants.keys import Merchant
from apss.services.views import AccountView

__all__ = ["account"]


@get("/v1/account", tags=["account"], summary="The merchant this key belongs to", security=[{"bearer": []}])
async def account(merchant: Merchant, svc: Services) -> AccountView:
    return svc.merchants.account(merchant)

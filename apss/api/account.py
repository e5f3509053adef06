"""The key's own merchant, and the settings a merchant keeps itself (its embedding sites)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, patch
from msgspec import Meta

from apss.api.common import Services
from apss.domain.origins import ORIGINS_MAX
from apss.services.merchants.keys import Merchant
from apss.services.views import AccountView

__all__ = ["AccountUpdate", "account", "update_account"]

Origins = Annotated[list[Annotated[str, Meta(min_length=1, max_length=300)]], Meta(max_length=ORIGINS_MAX)]


class AccountUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The sites that embed the checkout (scheme://host[:port]): the checkout page may be framed by
    # them (CSP frame-ancestors) and the browser endpoints answer CORS for them. Replaces the list.
    allowed_origins: Origins


@get("/v1/account", tags=["account"], summary="The merchant this key belongs to", security=[{"bearer": []}])
async def account(merchant: Merchant, svc: Services) -> AccountView:
    return svc.merchants.account(merchant)


@patch("/v1/account", tags=["account"], summary="Set the sites that embed the checkout (allowed_origins)",
       security=[{"bearer": []}])
async def update_account(data: AccountUpdate, merchant: Merchant, svc: Services) -> AccountView:
    await svc.merchants.set_allowed_origins(merchant.id, data.allowed_origins)
    return svc.merchants.account(merchant)

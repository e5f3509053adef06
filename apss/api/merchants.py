"""Admin: merchants and their keys. Admin endpoints ignore Idempotency-Key: their responses
carry secrets, which are never stored."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, get, patch, post, put
from litestar.di import Provide
from msgspec import UNSET, Meta, UnsetType

from apss.api.account import Origins
from apss.api.common import Cursor, Limit, Services, admin_guard, list_response
from apss.domain.money import is_iso_currency
from apss.errors import CurrencyNotSupported
from apss.services.views import (
    MerchantCreatedView,
    MerchantList,
    MerchantView,
    PublishableKeyView,
    SecretKeyView,
)

__all__ = ["MerchantController"]


class MerchantCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    mode: Literal["test", "live"] = "test"
    # Settlement currency: the base that FX converts prices from (ISO 4217).
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")] = "USD"


class RateLimitIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    requests_per_s: Annotated[int, Meta(ge=0, le=1_000_000)]  # 0: unlimited
    burst: Annotated[int, Meta(ge=1, le=10_000_000)]


class MerchantUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    allowed_origins: Origins | UnsetType = UNSET  # the merchant's embedding sites (README "Embedding the checkout")
    # The merchant's own API rate limit; null: back to the server's [api] defaults.
    rate_limit: RateLimitIn | None | UnsetType = UNSET


class MerchantKycIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    status: Literal["unverified", "pending", "verified", "rejected"]


class MerchantController(Controller):
    path = "/v1/merchants"
    tags = ["admin"]
    dependencies = {"admin": Provide(admin_guard)}
    security = [{"bearer": []}]

    @post("/", status_code=201, summary="Create a merchant (admin); its secret key is shown only here")
    async def create(self, data: MerchantCreate, svc: Services, admin: None) -> MerchantCreatedView:
        if not is_iso_currency(data.currency):
            raise CurrencyNotSupported(f"'{data.currency}' is not a supported currency.", param="currency")
        return await svc.merchants.create(name=data.name, mode=data.mode, currency=data.currency)

    @get("/", summary="List merchants (admin)")
    async def list_merchants(self, svc: Services, admin: None, limit: Limit = 20, cursor: Cursor = None) -> Response[MerchantList]:
        items, has_more = await svc.merchants.list(after_id=cursor, limit=limit)
        return list_response(items, has_more)

    @get("/{merchant_id:str}", summary="Retrieve a merchant (admin)")
    async def retrieve(self, merchant_id: str, svc: Services, admin: None) -> MerchantView:
        return await svc.merchants.get(merchant_id)

    @post("/{merchant_id:str}/keys", status_code=201, summary="Roll the merchant's secret key; older keys stop working at once")
    async def roll_key(self, merchant_id: str, svc: Services, admin: None) -> SecretKeyView:
        return await svc.merchants.rotate_key(merchant_id)

    @patch("/{merchant_id:str}", summary="Set the merchant's embedding sites (allowed_origins) or its own API rate limit (admin)")
    async def update(self, merchant_id: str, data: MerchantUpdate, svc: Services, admin: None) -> MerchantView:
        if data.allowed_origins is not UNSET:
            await svc.merchants.set_allowed_origins(merchant_id, data.allowed_origins)
        if data.rate_limit is not UNSET:
            limit = None if data.rate_limit is None else (data.rate_limit.requests_per_s, data.rate_limit.burst)
            await svc.merchants.set_rate_limit(merchant_id, limit)
        return await svc.merchants.get(merchant_id)

    @post("/{merchant_id:str}/publishable_keys", status_code=201,
          summary="Roll the merchant's publishable key; the old one stops working at once")
    async def roll_publishable_key(self, merchant_id: str, svc: Services, admin: None) -> PublishableKeyView:
        return await svc.merchants.roll_publishable_key(merchant_id)

    @put("/{merchant_id:str}/kyc", summary="Set the merchant's KYC status (admin); settlement payouts wait for verified")
    async def set_kyc(self, merchant_id: str, data: MerchantKycIn, svc: Services, admin: None) -> MerchantView:
        return await svc.merchants.set_kyc(merchant_id, status=data.status)

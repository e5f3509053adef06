"""Privacy: a player's export and erasure; admin: the audit log and the personal data keys."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, Response, get, post
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
from apss.clock import parse_rfc3339
from apss.errors import InvalidRequest
from apss.services.merchants.keys import Merchant
from apss.services.players.privacy import AuditEntryList, ErasureView, KeysView
from apss.services.players.wallets import PLAYER_ID_PATTERN

__all__ = ["AuditController", "PlayerPrivacyController", "PrivacyKeysController"]

PlayerId = Annotated[str, Parameter(pattern=PLAYER_ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : -")]


class PlayerPrivacyController(Controller):
    path = "/v1/players/{player_id:str}"
    tags = ["players"]
    security = [{"bearer": []}]

    @get("/export", summary="Everything held about a player (orders, payments, refunds, wallet and inventory, "
                            "subscriptions, webhooks that named them), as JSON")
    async def export(self, player_id: PlayerId, merchant: Merchant, svc: Services) -> Response[dict]:
        body = await svc.privacy.export(merchant_id=merchant.id, player_id=player_id)
        return Response(content=body, status_code=200, media_type="application/json")

    @post("/erase", status_code=200, summary="Erase a player's personal data for good; the player id becomes a "
                                             "keyed-hash pseudonym (amounts and the ledger stay)", idempotent=True)
    async def erase(self, player_id: PlayerId, request: Request, merchant: Merchant,
                    svc: Services) -> Response[ErasureView]:
        idem = idempotency_request(request, None)  # validates the key; the hash is made over the pseudonym
        return outcome_response(await svc.privacy.erase(merchant_id=merchant.id, player_id=player_id,
                                                        idempotency_key=idem.key if idem else None))


def _ms(text: str | None, param: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise InvalidRequest(f"{param} must be an RFC 3339 time.", param=param) from None


class AuditController(Controller):
    path = "/v1/admin/audit"
    tags = ["admin"]
    dependencies = {"admin": Provide(admin_guard)}
    security = [{"bearer": []}]

    @get("/", summary="The audit log (admin): every changing merchant and admin action, newest first")
    async def list_audit(
        self, svc: Services, admin: None, limit: Limit = 20, cursor: Cursor = None,
        merchant_id: Annotated[str | None, Parameter(max_length=64)] = None,
        action: Annotated[str | None, Parameter(max_length=64)] = None,
        actor: Literal["merchant", "admin"] | None = None,
        object_id: Annotated[str | None, Parameter(max_length=200)] = None,
        created_gte: Annotated[str | None, Parameter(description="RFC 3339", max_length=40)] = None,
        created_lt: Annotated[str | None, Parameter(description="RFC 3339", max_length=40)] = None,
    ) -> Response[AuditEntryList]:
        items, has_more = await svc.audit.list(after_id=cursor, limit=limit, merchant_id=merchant_id, action=action,
                                               actor=actor, object_id=object_id,
                                               since_ms=_ms(created_gte, "created_gte"),
                                               until_ms=_ms(created_lt, "created_lt"))
        return list_response(items, has_more)


class PrivacyKeysController(Controller):
    path = "/v1/admin/privacy/keys"
    tags = ["admin"]
    dependencies = {"admin": Provide(admin_guard)}
    security = [{"bearer": []}]

    @get("/", summary="The personal data key ids (admin) and the primary one; never the keys")
    async def show(self, svc: Services, admin: None) -> KeysView:
        return svc.privacy.keys_view()

    @post("/rotate", status_code=200, summary="A new primary personal data key (admin); older values are "
                                              "re-sealed in the background")
    async def rotate(self, svc: Services, admin: None) -> KeysView:
        return await svc.privacy.rotate_key()

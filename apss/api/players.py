"""Players: inventory, wallet, wallet debit."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from apss.api.common import Services, idempotency_request, outcome_response
from apss.services.merchants.keys import Merchant
from apss.services.players.wallets import PLAYER_ID_PATTERN, WalletDebit
from apss.services.views import InventoryView, WalletDebitView, WalletView

__all__ = ["PlayerController"]

PlayerId = Annotated[str, Parameter(pattern=PLAYER_ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : -")]


class PlayerController(Controller):
    path = "/v1/players/{player_id:str}"
    tags = ["players"]
    security = [{"bearer": []}]

    @get("/inventory", summary="Items, active memberships and entitlements a player owns")
    async def inventory(self, player_id: PlayerId, merchant: Merchant, svc: Services) -> InventoryView:
        return await svc.players.inventory(merchant_id=merchant.id, player_id=svc.privacy.resolve(merchant.id, player_id))

    @get("/wallet", summary="Virtual currency balances")
    async def wallet(self, player_id: PlayerId, merchant: Merchant, svc: Services) -> WalletView:
        return await svc.players.wallet(merchant_id=merchant.id, player_id=svc.privacy.resolve(merchant.id, player_id))

    @post("/wallet/debit", summary="Spend virtual currency in the game; never below zero", idempotent=True)
    async def debit(self, player_id: PlayerId, data: WalletDebit, request: Request, merchant: Merchant,
                    svc: Services) -> Response[WalletDebitView]:
        idem = idempotency_request(request, data)
        player_id = svc.privacy.resolve(merchant.id, player_id)  # an erased player's records carry the pseudonym
        return outcome_response(await svc.players.debit(merchant_id=merchant.id, player_id=player_id, command=data, idem=idem))

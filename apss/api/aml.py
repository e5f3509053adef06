"""AML cases and thresholds, player KYC, minors' spending limits (merchant-authenticated)."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, Response, get, post, put
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
from apss.services.players.wallets import PLAYER_ID_PATTERN
from apss.services.risk.aml import (
    AmlCaseDetail,
    AmlCaseList,
    AmlCaseUpdate,
    AmlCaseView,
    AmlSettingsIn,
    AmlSettingsView,
)
from apss.services.risk.kyc import (
    MinorLimitsIn,
    MinorPresetList,
    MinorPresetView,
    PlayerKycIn,
    PlayerKycView,
)

__all__ = ["AmlController", "MinorLimitController", "PlayerKycController"]

PlayerId = Annotated[str, Parameter(pattern=PLAYER_ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : -")]
PlayerFilter = Annotated[str | None, Parameter(pattern=PLAYER_ID_PATTERN, description="only this player's cases")]
StatusFilter = Literal["open", "investigating", "reported", "closed"] | None
# The paths API.md fixes.
_CASES = "/v1/risk/aml/cases"
_CASES_CSV = "/v1/risk/aml/cases.csv"
_CASE = "/v1/risk/aml/cases/{case_id:str}"


class AmlController(Controller):
    tags = ["risk"]
    security = [{"bearer": []}]

    @get(_CASES, summary="AML cases, newest first")
    async def list_cases(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                         status: StatusFilter = None, player_id: PlayerFilter = None) -> Response[AmlCaseList]:
        items, has_more = await svc.aml.list_cases(merchant=merchant, after_id=cursor, limit=limit, status=status,
                                                   player_id=player_id)
        return list_response(items, has_more)

    @get(_CASES_CSV, summary="AML cases as CSV (newest first)", media_type="text/csv")
    async def cases_csv(self, merchant: Merchant, svc: Services, status: StatusFilter = None,
                        player_id: PlayerFilter = None) -> Response[bytes]:
        body = await svc.aml.cases_csv(merchant=merchant, status=status, player_id=player_id)
        return Response(content=body, status_code=200, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="aml_cases.csv"'})

    @get(_CASE, summary="An AML case with its hits and status moves")
    async def get_case(self, case_id: str, merchant: Merchant, svc: Services) -> AmlCaseDetail:
        return await svc.aml.get_case(merchant=merchant, case_id=case_id)

    @post(_CASE, status_code=200, summary="Move an AML case (open -> investigating -> reported | closed) or add a note",
          idempotent=True)
    async def update_case(self, case_id: str, data: AmlCaseUpdate, request: Request, merchant: Merchant,
                          svc: Services) -> Response[AmlCaseView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.aml.update_case(merchant=merchant, case_id=case_id, command=data, idem=idem))

    @get("/v1/risk/aml/settings", summary="The AML and KYC thresholds in force (merchant currency, minor units)")
    async def get_settings(self, merchant: Merchant, svc: Services) -> AmlSettingsView:
        return await svc.aml.get_settings(merchant=merchant)

    @put("/v1/risk/aml/settings", status_code=200, summary="Set the AML and KYC thresholds (null: the config default)")
    async def put_settings(self, data: AmlSettingsIn, merchant: Merchant, svc: Services) -> AmlSettingsView:
        return await svc.aml.put_settings(merchant=merchant, command=data)


class PlayerKycController(Controller):
    path = "/v1/players/{player_id:str}/kyc"
    tags = ["players"]
    security = [{"bearer": []}]

    @get("/", summary="The player's KYC: status, age, jurisdiction, the minors' band that applies")
    async def get_kyc(self, player_id: PlayerId, merchant: Merchant, svc: Services) -> PlayerKycView:
        return await svc.kyc.get_player(merchant=merchant, player_id=player_id)

    @put("/", status_code=200, summary="Set the player's KYC (verified delivers orders held for it; rejected refunds them)",
         idempotent=True)
    async def put_kyc(self, player_id: PlayerId, data: PlayerKycIn, request: Request, merchant: Merchant,
                      svc: Services) -> Response[PlayerKycView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.kyc.put_player(merchant=merchant, player_id=player_id, command=data, idem=idem))

    @post("/", status_code=200, summary="The same as PUT", idempotent=True)
    async def post_kyc(self, player_id: PlayerId, data: PlayerKycIn, request: Request, merchant: Merchant,
                       svc: Services) -> Response[PlayerKycView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.kyc.put_player(merchant=merchant, player_id=player_id, command=data, idem=idem))


class MinorLimitController(Controller):
    path = "/v1/minor_limits"
    tags = ["risk"]
    security = [{"bearer": []}]

    @get("/", summary="Minors' spending limit presets: the merchant's and the built-in ones (CN)")
    async def list_presets(self, merchant: Merchant, svc: Services) -> MinorPresetList:
        return await svc.kyc.list_presets(merchant=merchant)

    @post("/", status_code=200, summary="Set the merchant's own preset for a jurisdiction (replaces a built-in one)",
          idempotent=True)
    async def put_preset(self, data: MinorLimitsIn, request: Request, merchant: Merchant,
                         svc: Services) -> Response[MinorPresetView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.kyc.put_preset(merchant=merchant, command=data, idem=idem))

"""Disputes: the records, their evidence bundle and its submission; the merchant's dispute policy;
the sandbox's dispute endpoints (test merchants), which only make the sandbox send callbacks."""

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
from apss.services.disputes.evidence import EvidenceBundle, EvidenceSubmit
from apss.services.disputes.records import (
    DisputeEventList,
    DisputeList,
    DisputePolicy,
    DisputePolicyUpdate,
    DisputeView,
)
from apss.services.merchants.keys import Merchant
from apss.services.sandbox.provider import (
    SandboxDisputeClose,
    SandboxDisputeCreate,
    SandboxDisputeView,
)

__all__ = ["DisputeController", "DisputePolicyController", "SandboxDisputeController"]

Status = Annotated[Literal["needs_response", "under_review", "won", "lost"] | None,
                   Parameter(description="Only disputes in this status.")]


class DisputeController(Controller):
    path = "/v1/disputes"
    tags = ["disputes"]
    security = [{"bearer": []}]

    @get("/", summary="List disputes, newest first")
    async def list_disputes(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                            status: Status = None) -> Response[DisputeList]:
        items, has_more = await svc.disputes.list(merchant_id=merchant.id, after_id=cursor, limit=limit, status=status)
        return list_response(items, has_more)

    @get("/{dispute_id:str}", summary="Retrieve a dispute")
    async def retrieve(self, dispute_id: str, merchant: Merchant, svc: Services) -> DisputeView:
        return await svc.disputes.get(merchant_id=merchant.id, dispute_id=dispute_id)

    @get("/{dispute_id:str}/events", summary="A dispute's steps, oldest first")
    async def events(self, dispute_id: str, merchant: Merchant, svc: Services) -> Response[DisputeEventList]:
        return list_response(await svc.disputes.events(merchant_id=merchant.id, dispute_id=dispute_id), False)

    @get("/{dispute_id:str}/evidence", summary="The evidence bundle: order, timeline, delivery log, player history")
    async def evidence(self, dispute_id: str, merchant: Merchant, svc: Services) -> EvidenceBundle:
        return await svc.dispute_evidence.bundle(merchant_id=merchant.id, dispute_id=dispute_id)

    @post("/{dispute_id:str}/submit", status_code=200, summary="Submit the evidence to the dispute's channel")
    async def submit(self, dispute_id: str, merchant: Merchant, svc: Services,
                     data: EvidenceSubmit | None = None) -> DisputeView:
        return await svc.dispute_evidence.submit(merchant=merchant, dispute_id=dispute_id, command=data or EvidenceSubmit())


class DisputePolicyController(Controller):
    path = "/v1/account/dispute_policy"
    tags = ["disputes"]
    security = [{"bearer": []}]

    @get("/", summary="The merchant's dispute policy (defaults: revoke_goods true, block_player false)")
    async def read(self, merchant: Merchant, svc: Services) -> DisputePolicy:
        return await svc.disputes.policy(merchant.id)

    @put("/", summary="Set the dispute policy applied to disputes opened from now on", idempotent=True)
    async def write(self, data: DisputePolicyUpdate, request: Request, merchant: Merchant,
                    svc: Services) -> Response[DisputePolicy]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.disputes.set_policy(merchant_id=merchant.id, command=data, idem=idem))


class SandboxDisputeController(Controller):
    path = "/v1/sandbox"
    tags = ["sandbox"]
    security = [{"bearer": []}]

    @post("/payments/{payment_id:str}/dispute", status_code=202,
          summary="The payer's bank disputes a paid sandbox payment (then the signed dispute.created callback)", idempotent=True)
    async def raise_dispute(self, payment_id: str, request: Request, merchant: Merchant, svc: Services,
                            data: SandboxDisputeCreate | None = None) -> Response[SandboxDisputeView]:
        command = data or SandboxDisputeCreate()
        idem = idempotency_request(request, command)
        return outcome_response(await svc.sandbox.raise_dispute(merchant=merchant, payment_id=payment_id, command=command,
                                                                idem=idem))

    @post("/disputes/{dispute_id:str}/close", status_code=202,
          summary="The bank decides a sandbox dispute (then the signed dispute.closed callback)", idempotent=True)
    async def close_dispute(self, dispute_id: str, data: SandboxDisputeClose, request: Request, merchant: Merchant,
                            svc: Services) -> Response[SandboxDisputeView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.sandbox.close_dispute(merchant=merchant, dispute_id=dispute_id, command=data,
                                                                idem=idem))

"""Sandbox endpoints (test merchants only): make the sandbox provider complete a payment.
They never change the order: the provider sends its signed callback, which does."""

from __future__ import annotations

from litestar import Controller, Request, Response, post

from apss.api.common import Services, idempotency_request, outcome_response
from apss.services.merchants.keys import Merchant
from apss.services.views import SandboxActionView

__all__ = ["SandboxController"]


class SandboxController(Controller):
    path = "/v1/sandbox/payments/{payment_id:str}"
    tags = ["sandbox"]
    security = [{"bearer": []}]

    @post("/succeed", status_code=202, summary="The payer pays (magic values in order metadata may still decline)", idempotent=True)
    async def succeed(self, payment_id: str, request: Request, merchant: Merchant, svc: Services) -> Response[SandboxActionView]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.sandbox.complete(merchant=merchant, payment_id=payment_id, pay=True, idem=idem))

    @post("/fail", status_code=202, summary="The payer's payment fails", idempotent=True)
    async def fail(self, payment_id: str, request: Request, merchant: Merchant, svc: Services) -> Response[SandboxActionView]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.sandbox.complete(merchant=merchant, payment_id=payment_id, pay=False, idem=idem))

"""Payments: one order's payment, with every channel attempt (routing and fallback)."""

from __future__ import annotations

from litestar import Controller, get

from apss.api.common import Services
from apss.services.merchants.keys import Merchant
from apss.services.views import PaymentDetailView

__all__ = ["PaymentController"]


class PaymentController(Controller):
    path = "/v1/payments"
    tags = ["payments"]
    security = [{"bearer": []}]

    @get("/{payment_id:str}", summary="Retrieve a payment with its channel attempts")
    async def retrieve(self, payment_id: str, merchant: Merchant, svc: Services) -> PaymentDetailView:
        return await svc.orders.payment(merchant_id=merchant.id, payment_id=payment_id)

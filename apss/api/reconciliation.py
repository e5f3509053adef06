"""Reconciliation: import a provider statement (CSV) and read the stored runs with their items."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from apss.api.common import Cursor, Limit, Services, list_response
from apss.services.merchants.keys import Merchant
from apss.services.money.reconciliation import (
    ReconciliationRunDetail,
    ReconciliationRunList,
    ReconciliationRunView,
)
from apss.services.views import encode

__all__ = ["STATEMENT_BYTES_MAX", "ReconciliationController"]

STATEMENT_BYTES_MAX = 32 * 1024 * 1024  # a month of a busy merchant's Stripe export fits

ItemStatusQuery = Literal["matched", "amount_mismatch", "currency_mismatch", "missing_here", "missing_at_provider",
                          "fee_mismatch"]


class ReconciliationController(Controller):
    path = "/v1/reconciliation"
    tags = ["reconciliation"]
    security = [{"bearer": []}]

    @post("/{channel:str}/statements", request_max_body_size=STATEMENT_BYTES_MAX,
          csv_body="The provider's statement file as exported (Content-Type text/csv), at most 32 MiB.",
          summary="Import a provider statement (CSV body) and match it against our payments and refunds",
          description="The body is the statement as the provider exports it (Content-Type text/csv): the sandbox's "
                      "`type,provider_ref,payment_id,amount,fee,currency,occurred_at`, Stripe's balance-transaction "
                      "export, PayPal, Alipay or WeChat Pay bills, the App Store's Summary Sales or Financial Report "
                      "(tab-separated), Google Play's earnings report. 201 with the new run and its counts; the same file "
                      "imported again answers 200 with the first run (nothing is stored or alerted twice), so no "
                      "Idempotency-Key is needed. Every discrepancy raises an alert `reconciliation_<status>`.")
    async def import_statement(self, channel: str, request: Request, merchant: Merchant, svc: Services,
                               source_name: Annotated[str | None, Parameter(max_length=200)] = None,
                               ) -> Response[ReconciliationRunView]:
        data = await request.body()
        name = source_name or f"{channel}-statement.csv"
        run, created = await svc.reconciliation.import_statement(merchant=merchant, channel=channel, data=data,
                                                                 source_name=name)
        return Response(content=encode(run), status_code=201 if created else 200, media_type="application/json")

    @get("/runs", summary="Reconciliation runs, newest first")
    async def list_runs(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                        channel: Annotated[str | None, Parameter(max_length=32)] = None,
                        ) -> Response[ReconciliationRunList]:
        runs, has_more = await svc.reconciliation.list_runs(merchant_id=merchant.id, after_id=cursor, limit=limit,
                                                            channel=channel)
        return list_response(runs, has_more)

    @get("/runs/{run_id:str}", summary="A reconciliation run with its items (optionally only one status)")
    async def get_run(self, run_id: str, merchant: Merchant, svc: Services,
                      status: ItemStatusQuery | None = None) -> ReconciliationRunDetail:
        return await svc.reconciliation.get_run(merchant_id=merchant.id, run_id=run_id, status=status)

"""Subscriptions: create (its first order is paid like any order), read, list, events, cancel,
resume, change; and their report."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from apss.api.common import (
    Cursor,
    Limit,
    Services,
    idempotency_request,
    list_response,
    outcome_response,
)
from apss.clock import parse_rfc3339
from apss.domain.subscriptions import SubscriptionStatus
from apss.errors import InvalidRequest
from apss.services.merchants.keys import Merchant
from apss.services.subscriptions.service import (
    SubscriptionCancel,
    SubscriptionChange,
    SubscriptionCreate,
    SubscriptionEventView,
    SubscriptionReport,
    SubscriptionView,
)

__all__ = ["SubscriptionController", "SubscriptionReportController"]


class SubscriptionList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[SubscriptionView]
    has_more: bool
    next_cursor: str | None


class SubscriptionEventList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[SubscriptionEventView]
    has_more: bool
    next_cursor: str | None


class SubscriptionController(Controller):
    path = "/v1/subscriptions"
    tags = ["subscriptions"]
    security = [{"bearer": []}]

    @post("/", summary="Subscribe a player to a plan: its first order is paid like any order", idempotent=True)
    async def create(self, data: SubscriptionCreate, request: Request, merchant: Merchant,
                     svc: Services) -> Response[SubscriptionView]:
        data = msgspec.structs.replace(data, player_id=svc.privacy.resolve(merchant.id, data.player_id))
        idem = idempotency_request(request, data)
        return outcome_response(await svc.subscriptions.create(merchant=merchant, command=data, idem=idem))

    @get("/", summary="List subscriptions, newest first")
    async def list_subscriptions(
        self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
        status: SubscriptionStatus | None = None,
        player_id: Annotated[str | None, Parameter(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")] = None,
    ) -> Response[SubscriptionList]:
        items, has_more = await svc.subscriptions.list(merchant=merchant, after_id=cursor, limit=limit,
                                                       status=status.value if status else None,
                                                       player_id=svc.privacy.resolve(merchant.id, player_id) if player_id else None)
        return list_response(items, has_more)

    @get("/{subscription_id:str}", summary="Retrieve a subscription")
    async def retrieve(self, subscription_id: str, merchant: Merchant, svc: Services) -> SubscriptionView:
        return await svc.subscriptions.get(merchant=merchant, subscription_id=subscription_id)

    @get("/{subscription_id:str}/events", summary="The subscription's state changes and charges, with their causes")
    async def events(self, subscription_id: str, merchant: Merchant, svc: Services) -> Response[SubscriptionEventList]:
        return list_response(await svc.subscriptions.events(merchant=merchant, subscription_id=subscription_id), False)

    @post("/{subscription_id:str}/cancel", status_code=200,
          summary="Cancel at the period end (default) or now (`at_period_end: false`: the membership ends now)", idempotent=True)
    async def cancel(self, subscription_id: str, request: Request, merchant: Merchant, svc: Services,
                     data: SubscriptionCancel | None = None) -> Response[SubscriptionView]:
        command = data or SubscriptionCancel()
        idem = idempotency_request(request, command)
        return outcome_response(await svc.subscriptions.cancel(merchant=merchant, subscription_id=subscription_id,
                                                               command=command, idem=idem))

    @post("/{subscription_id:str}/resume", status_code=200, summary="Undo a cancel scheduled for the period end", idempotent=True)
    async def resume(self, subscription_id: str, request: Request, merchant: Merchant,
                     svc: Services) -> Response[SubscriptionView]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.subscriptions.resume(merchant=merchant, subscription_id=subscription_id, idem=idem))

    @post("/{subscription_id:str}/change", status_code=200,
          summary="Change plan: a dearer plan is prorated and charged now, a cheaper one applies at the next renewal", idempotent=True)
    async def change(self, subscription_id: str, data: SubscriptionChange, request: Request, merchant: Merchant,
                     svc: Services) -> Response[SubscriptionView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.subscriptions.change(merchant=merchant, subscription_id=subscription_id,
                                                               command=data, idem=idem))


class SubscriptionReportController(Controller):
    path = "/v1/reports/subscriptions"
    tags = ["reports"]
    security = [{"bearer": []}]

    @get("/", summary="Live subscriptions, MRR per currency, churn, renewal success and revenue recovered by retries")
    async def report(self, merchant: Merchant, svc: Services, start: Annotated[str, Parameter(query="from")],
                     end: Annotated[str, Parameter(query="to")]) -> SubscriptionReport:
        try:
            from_ms, to_ms = parse_rfc3339(start), parse_rfc3339(end)
        except ValueError:
            raise InvalidRequest("from and to are RFC 3339 times.", code="time_invalid", param="from") from None
        if to_ms <= from_ms:
            raise InvalidRequest("to must be after from.", code="period_empty", param="to")
        return await svc.subscriptions.report(merchant=merchant, from_ms=from_ms, to_ms=to_ms)

"""Merchant webhook endpoints, their delivery log and replays; deliveries to the game.

(apss/api/provider_callbacks.py is the inbound route from providers; this module is the merchant's outbound side.)
"""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, Response, delete, get, patch, post
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
from apss.services.notify.merchant_webhooks import (
    ReplayView,
    WebhookDeliveryList,
    WebhookDeliveryView,
    WebhookEndpointCreate,
    WebhookEndpointList,
    WebhookEndpointSecretView,
    WebhookEndpointUpdate,
    WebhookEndpointView,
    WebhookReplay,
)
from apss.services.players.game_deliveries import DeliveryList, DeliveryView

__all__ = ["DeliveryController", "WebhookDeliveryController", "WebhookEndpointController"]

DeliveryStatus = Literal["pending", "succeeded", "failed"]
ObjectId = Annotated[str | None, Parameter(max_length=64)]


class WebhookEndpointController(Controller):
    path = "/v1/webhook_endpoints"
    tags = ["webhooks"]
    security = [{"bearer": []}]

    @post("/", summary="Register an endpoint; the answer shows its signing secret (whsec_...) once",
          description="Idempotency-Key is ignored here: the answer carries a secret, which is never stored in clear.")
    async def create(self, data: WebhookEndpointCreate, merchant: Merchant, svc: Services) -> WebhookEndpointSecretView:
        return await svc.webhooks.create_endpoint(merchant_id=merchant.id, merchant_mode=merchant.mode, command=data)

    @get("/", summary="List endpoints, newest first")
    async def list_endpoints(self, merchant: Merchant, svc: Services, limit: Limit = 20,
                             cursor: Cursor = None) -> Response[WebhookEndpointList]:
        items, has_more = await svc.webhooks.list_endpoints(merchant_id=merchant.id, after_id=cursor, limit=limit)
        return list_response(items, has_more)

    @get("/{endpoint_id:str}", summary="Retrieve an endpoint")
    async def retrieve(self, endpoint_id: str, merchant: Merchant, svc: Services) -> WebhookEndpointView:
        return await svc.webhooks.get_endpoint(merchant_id=merchant.id, endpoint_id=endpoint_id)

    @patch("/{endpoint_id:str}", summary="Change the URL or events, or enable / disable the endpoint")
    async def update(self, endpoint_id: str, data: WebhookEndpointUpdate, merchant: Merchant,
                     svc: Services) -> WebhookEndpointView:
        return await svc.webhooks.update_endpoint(merchant_id=merchant.id, endpoint_id=endpoint_id, command=data,
                                                  merchant_mode=merchant.mode)

    @delete("/{endpoint_id:str}", status_code=200, summary="Disable the endpoint (its delivery log stays)")
    async def remove(self, endpoint_id: str, merchant: Merchant, svc: Services) -> WebhookEndpointView:
        return await svc.webhooks.delete_endpoint(merchant_id=merchant.id, endpoint_id=endpoint_id)

    @post("/{endpoint_id:str}/roll_secret", status_code=200,
          summary="New signing secret; the old one keeps signing (a second v1) for 24 h",
          description="Idempotency-Key is ignored here: the answer carries a secret, which is never stored in clear.")
    async def roll_secret(self, endpoint_id: str, merchant: Merchant, svc: Services) -> WebhookEndpointSecretView:
        return await svc.webhooks.roll_secret(merchant_id=merchant.id, endpoint_id=endpoint_id)

    @post("/{endpoint_id:str}/replay", status_code=200, summary="Resend every subscribed event created since a time", idempotent=True)
    async def replay(self, endpoint_id: str, data: WebhookReplay, request: Request, merchant: Merchant,
                     svc: Services) -> Response[ReplayView]:
        idem = idempotency_request(request, data)
        return outcome_response(await svc.webhooks.replay(merchant_id=merchant.id, endpoint_id=endpoint_id,
                                                          command=data, idem=idem))

    @get("/{endpoint_id:str}/deliveries", summary="The endpoint's delivery log, newest first")
    async def deliveries(self, endpoint_id: str, merchant: Merchant, svc: Services, limit: Limit = 20,
                         cursor: Cursor = None, status: DeliveryStatus | None = None) -> Response[WebhookDeliveryList]:
        items, has_more = await svc.webhooks.list_deliveries(merchant_id=merchant.id, endpoint_id=endpoint_id,
                                                             status=status, after_id=cursor, limit=limit)
        return list_response(items, has_more)


class WebhookDeliveryController(Controller):
    path = "/v1/webhook_deliveries"
    tags = ["webhooks"]
    security = [{"bearer": []}]

    @get("/", summary="The delivery log, newest first (filter by event_id, endpoint_id, status)")
    async def list_deliveries(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                              event_id: ObjectId = None, endpoint_id: ObjectId = None,
                              status: DeliveryStatus | None = None) -> Response[WebhookDeliveryList]:
        items, has_more = await svc.webhooks.list_deliveries(merchant_id=merchant.id, endpoint_id=endpoint_id,
                                                             event_id=event_id, status=status, after_id=cursor,
                                                             limit=limit)
        return list_response(items, has_more)

    @get("/{delivery_id:str}", summary="Retrieve a delivery")
    async def retrieve(self, delivery_id: str, merchant: Merchant, svc: Services) -> WebhookDeliveryView:
        return await svc.webhooks.get_delivery(merchant_id=merchant.id, delivery_id=delivery_id)

    @post("/{delivery_id:str}/retry", status_code=200, summary="Send again now (a final delivery gets a new delivery of the same event)", idempotent=True)
    async def retry(self, delivery_id: str, request: Request, merchant: Merchant,
                    svc: Services) -> Response[WebhookDeliveryView]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.webhooks.retry_delivery(merchant_id=merchant.id, delivery_id=delivery_id,
                                                                  idem=idem))


class DeliveryController(Controller):
    path = "/v1/deliveries"
    tags = ["deliveries"]
    security = [{"bearer": []}]

    @get("/", summary="Deliveries to the game, oldest first (a game server polls status=pending)")
    async def list_deliveries(self, merchant: Merchant, svc: Services, limit: Limit = 20, cursor: Cursor = None,
                              status: Literal["pending", "acknowledged"] | None = None) -> Response[DeliveryList]:
        items, has_more = await svc.deliveries.list(merchant_id=merchant.id, status=status, limit=limit, cursor=cursor)
        return list_response(items, has_more)

    @get("/{delivery_id:str}", summary="Retrieve a delivery")
    async def retrieve(self, delivery_id: str, merchant: Merchant, svc: Services) -> DeliveryView:
        return await svc.deliveries.get(merchant_id=merchant.id, delivery_id=delivery_id)

    @post("/{delivery_id:str}/ack", status_code=200, summary="The game has handed the goods over (idempotent)", idempotent=True)
    async def ack(self, delivery_id: str, request: Request, merchant: Merchant, svc: Services) -> Response[DeliveryView]:
        idem = idempotency_request(request, None)
        return outcome_response(await svc.deliveries.ack_request(merchant_id=merchant.id, delivery_id=delivery_id,
                                                                 idem=idem))

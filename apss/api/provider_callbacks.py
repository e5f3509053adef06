"""Provider callbacks: one route for every channel. Public: the provider's signature, checked
before anything in the request is trusted, is the authentication. PIX callbacks are not signed:
the PSP posts to the registered URL with `/pix` appended, and the channel confirms each notice by
asking the PSP before anything is applied."""

from __future__ import annotations

from litestar import Request, Response, post

from apss.api.common import Services
from apss.errors import NotFound

__all__ = ["pix_callback", "provider_callback"]

_CALLBACK_BYTES_MAX = 1_048_576


async def _handle(channel: str, merchant_id: str, request: Request, svc: Services) -> Response[bytes]:
    body = await request.body()
    headers = {name.lower(): value for name, value in request.headers.items()}
    query = {name: value for name, value in request.query_params.items()}
    if svc.store_purchases.handles(channel):  # an app store's server notifications (services/iap)
        reply = await svc.store_purchases.handle_notification(channel_name=channel, merchant_id=merchant_id,
                                                              headers=headers, body=body)
        return Response(content=reply.body, status_code=reply.status_code, media_type=reply.media_type)
    reply = await svc.payment_events.handle_callback(channel_name=channel, merchant_id=merchant_id, headers=headers,
                                                     body=body, query=query)
    return Response(content=reply.body, status_code=reply.status_code, media_type=reply.media_type)


@post("/v1/channels/{channel:str}/webhook/{merchant_id:str}", tags=["channels"], status_code=200,
      summary="Provider callback (answers exactly what the provider expects)", request_max_body_size=_CALLBACK_BYTES_MAX)
async def provider_callback(channel: str, merchant_id: str, request: Request, svc: Services) -> Response[bytes]:
    return await _handle(channel, merchant_id, request, svc)


# A template, not the literal /v1/channels/pix/...: a static "pix" segment would shadow
# PUT /v1/channels/{channel} for pix in the router.
@post("/v1/channels/{channel:str}/webhook/{merchant_id:str}/pix", tags=["channels"], status_code=200,
      summary="PIX callback (the PSP appends /pix to the registered webhook URL)",
      request_max_body_size=_CALLBACK_BYTES_MAX)
async def pix_callback(channel: str, merchant_id: str, request: Request, svc: Services) -> Response[bytes]:
    if channel != "pix":
        raise NotFound(f"No such route for the {channel} channel", param="channel")
    return await _handle("pix", merchant_id, request, svc)

"""Provider callbacks: one route for every channel. Public: the provider's signature, checked
before anything in the request is trusted, is the authentication."""

from __future__ import annotations

from litestar import Request, Response, post

from apss.api.common import Services

__all__ = ["provider_callback"]


@post("/v1/channels/{channel:str}/webhook/{merchant_id:str}", tags=["channels"], status_code=200,
      summary="Provider callback (answers exactly what the provider expects)", request_max_body_size=1_048_576)
async def provider_callback(channel: str, merchant_id: str, request: Request, svc: Services) -> Response[bytes]:
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

"""Channel settings, routing and health per merchant (API.md "Channel settings")."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, put
from msgspec import Meta

from apss.api.common import Services
from apss.services.merchants.keys import Merchant
from apss.services.payments.channels import ChannelList, ChannelView, RoutingIn

__all__ = ["ChannelController"]

Settings = Annotated[dict[Annotated[str, Meta(max_length=64)], str], Meta(max_length=20)]


class ChannelController(Controller):
    path = "/v1/channels"
    tags = ["channels"]
    security = [{"bearer": []}]

    @get("/", summary="The merchant's channels in routing order, with circuit-breaker state")
    async def list_channels(self, merchant: Merchant, svc: Services) -> ChannelList:
        return svc.channels.list(merchant)

    @put("/routing", summary="Set the ordered channels: default, by_currency, by_country")
    async def set_routing(self, data: RoutingIn, merchant: Merchant, svc: Services) -> ChannelList:
        return await svc.channels.put_routing(merchant=merchant, routing=data)

    @put("/{channel:str}", summary="Store the merchant's credentials for a channel; secrets are never returned")
    async def set_settings(self, channel: str, data: Settings, merchant: Merchant, svc: Services) -> ChannelView:
        return await svc.channels.put_settings(merchant=merchant, channel_name=channel, settings=data)

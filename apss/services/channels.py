"""Which channel serves a merchant, and with which credentials.

The sandbox signs with the merchant's own `sandbox_webhook_secret`. Provider credentials and
per-merchant routing arrive with the channels issue; until then a live merchant has no channel.
"""

from __future__ import annotations

from apss.channels.base import Channel, ChannelRegistry, Credentials
from apss.errors import ChannelNotAvailable, NotFound
from apss.services.merchants import Merchant

__all__ = ["ChannelAccess"]


class ChannelAccess:
    def __init__(self, *, registry: ChannelRegistry) -> None:
        self.registry = registry

    def resolve(self, merchant: Merchant, requested: str | None) -> Channel:
        name = requested or ("sandbox" if merchant.mode == "test" else None)
        if name is None:
            raise ChannelNotAvailable("This merchant has no payment channel configured.", param="channel")
        channel = self.registry.get(name)
        if channel is None:
            raise ChannelNotAvailable(f"No such channel: '{name}'.", param="channel")
        if channel.test_only and merchant.mode != "test":
            raise ChannelNotAvailable(f"The {name} channel is for test merchants only.", param="channel")
        self.credentials(merchant, channel)  # refuses channels the merchant has not configured
        return channel

    def credentials(self, merchant: Merchant, channel: Channel) -> Credentials:
        if channel.name == "sandbox":
            assert merchant.sandbox_webhook_secret, "test merchants always have a sandbox secret"
            return {"webhook_secret": merchant.sandbox_webhook_secret}
        raise ChannelNotAvailable(f"The {channel.name} channel is not configured for this merchant.", param="channel")

    def for_callback(self, name: str) -> Channel:
        channel = self.registry.get(name)
        if channel is None:
            raise NotFound(f"No such channel: '{name}'", param="channel")
        return channel

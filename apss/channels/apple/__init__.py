"""Apple's App Store: StoreKit 2 signed transactions and App Store Server Notifications v2."""

from apss.channels.apple.client import AppleChannel

__all__ = ["AppleChannel"]

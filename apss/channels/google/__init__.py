"""Google Play: purchase tokens and real-time developer notifications, read from the Play Developer API."""

from apss.channels.google.client import GoogleChannel

__all__ = ["GoogleChannel"]

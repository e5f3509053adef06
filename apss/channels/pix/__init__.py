"""PIX channel: the central bank's standard PIX API as PSPs implement it (charges with a BR Code,
callbacks confirmed by query, returns)."""

from apss.channels.pix.client import PixChannel

__all__ = ["PixChannel"]

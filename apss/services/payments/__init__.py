"""Payments: the one gateway for provider calls, channel settings and routing, provider callbacks, the janitor."""

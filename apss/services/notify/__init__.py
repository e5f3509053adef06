"""Telling the outside: the outbox of merchant webhooks, their signed deliveries, and alerts."""

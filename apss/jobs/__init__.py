"""The in-process scheduler and its jobs (expiry, sandbox callbacks, idempotency pruning)."""

-- Refunds whose provider call never got through (connection refused) or whose outcome is unknown
-- are sent again with backoff under the same idempotency key (the refund id) by the refund sender:
-- how many sends so far, when the next one is due, and whether any send may have reached the
-- provider (then the last one failing leaves the refund `pending` for the janitor, never `failed`).
ALTER TABLE refunds ADD COLUMN send_attempts INTEGER NOT NULL DEFAULT 0 CHECK (send_attempts >= 0);
ALTER TABLE refunds ADD COLUMN next_send_at_ms INTEGER;
ALTER TABLE refunds ADD COLUMN maybe_sent INTEGER NOT NULL DEFAULT 0 CHECK (maybe_sent IN (0, 1));

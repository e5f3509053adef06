-- Google Play refunds a purchase nobody acknowledged within three days: each store transaction
-- that its store wants acknowledged is due (ack_due_at_ms) until it is (acknowledged_at_ms); the
-- store_acknowledgements job retries a failed acknowledgement with backoff (services/iap). The
-- acknowledgement names the store's own product id and kind (Google: product | subscription).
ALTER TABLE store_transactions ADD COLUMN store_product_id TEXT;
ALTER TABLE store_transactions ADD COLUMN kind TEXT;
ALTER TABLE store_transactions ADD COLUMN ack_due_at_ms INTEGER;
ALTER TABLE store_transactions ADD COLUMN ack_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE store_transactions ADD COLUMN acknowledged_at_ms INTEGER;
CREATE INDEX store_transactions_ack_due ON store_transactions (ack_due_at_ms) WHERE ack_due_at_ms IS NOT NULL;

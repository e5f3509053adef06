-- Reads that stay flat at millions of orders (bench/growth.py).
-- The dashboard overview counts orders created today and per day of the last 14 (store/orders.py
-- count_created, created_per_day): a range of this index, never the orders themselves. Written
-- once per order (created_at_ms never changes).
CREATE INDEX orders_created ON orders (merchant_id, created_at_ms);
-- GET /v1/orders?status=... and the overview's pending counter (list_order_views, count_status):
-- without it a rare status walks every order of the merchant. Moves with each status change.
CREATE INDEX orders_status ON orders (merchant_id, status, id);
-- GET /v1/webhook_deliveries (store/webhooks.py list_deliveries) walked every merchant's
-- deliveries newest first; the first takes one merchant's (written once per delivery), the second
-- serves ?status=pending|failed (moves once per delivery, when it succeeds or fails for good).
CREATE INDEX webhook_deliveries_merchant ON webhook_deliveries (merchant_id, id);
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (merchant_id, status, id);

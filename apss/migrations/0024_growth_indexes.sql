-- Reads that stay flat at millions of orders (bench/growth.py).
-- The dashboard overview counts orders created today and per day of the last 14 (store/orders.py
-- count_created, created_per_day): a range of this index, never the orders themselves. Written
-- once per order (created_at_ms never changes).
CREATE INDEX orders_created ON orders (merchant_id, created_at_ms);
-- GET /v1/orders?status=... and the overview's pending counter (list_order_views, count_status):
-- without it a rare status walks every order of the merchant. Moves with each status change.
CREATE INDEX orders_status ON orders (merchant_id, status, id);
-- GET /v1/webhook_deliveries (store/webhooks.py list_deliveries) walked every merchant's
-- deliveries newest first; this takes one merchant's. Written once per delivery.
CREATE INDEX webhook_deliveries_merchant ON webhook_deliveries (merchant_id, id);

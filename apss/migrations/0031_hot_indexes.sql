-- Two indexes of the order path that no query uses, each written by every order (bench/writer.py):
-- order_items_product served only the per-player purchase limit (store/orders.py
-- purchased_quantity), which finds the player's orders by orders_player and their lines by the
-- primary key (order_id, line) just as well; products are never deleted, so the foreign key from
-- order_items.product_id needs no index of its children. orders_in_review is covered by
-- orders_status (merchant_id, status, id), which the planner already prefers for the review queue
-- (store/risk.py list_in_review).
DROP INDEX order_items_product;
DROP INDEX orders_in_review;

-- In-app purchases (POST /v1/iap/apple, the App Store's notifications): each store transaction
-- is delivered once per merchant. The primary key is the rule: a transaction seen again finds
-- the order of the first time, never a second one (services/iap). A subscription's renewals are
-- transactions of their own sharing original_transaction_id, which names the player of a renewal
-- that arrives only as a notification.
CREATE TABLE store_transactions (
    merchant_id TEXT NOT NULL,
    store TEXT NOT NULL,                    -- the channel: apple
    transaction_id TEXT NOT NULL,
    original_transaction_id TEXT NOT NULL,
    product_id TEXT NOT NULL REFERENCES products (id),
    order_id TEXT NOT NULL REFERENCES orders (id),
    player_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    purchased_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,                  -- the store refunded or revoked it
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, store, transaction_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX store_transactions_original ON store_transactions (merchant_id, store, original_transaction_id);
CREATE INDEX store_transactions_order ON store_transactions (order_id);
CREATE INDEX store_transactions_player ON store_transactions (merchant_id, player_id);

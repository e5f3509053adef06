-- App Store and Google Play subscriptions on APSS's own subscriptions (services/iap,
-- services/subscriptions/periods.py): the first store purchase of an auto-renewable product makes
-- a subscription whose periods are the store's own dates, and every renewal of the same store
-- chain (Apple's originalTransactionId, Google's purchase token) adds a period to it. The store
-- charges: APSS's renewal job never does (next_charge_at_ms stays NULL, and it skips these rows).
-- NULL for a web subscription.
ALTER TABLE subscriptions ADD COLUMN store TEXT;                          -- the channel: apple | google
ALTER TABLE subscriptions ADD COLUMN store_original_transaction_id TEXT;  -- Apple's originalTransactionId, Google's token
ALTER TABLE subscriptions ADD COLUMN store_environment TEXT;              -- Production | Sandbox | Test
-- The signing time of the last store notification applied to the status (Apple signs each one;
-- Google's event time): an older one arriving late changes nothing.
ALTER TABLE subscriptions ADD COLUMN store_signed_at_ms INTEGER;
CREATE INDEX subscriptions_store_chain ON subscriptions (merchant_id, store, store_original_transaction_id)
    WHERE store IS NOT NULL;

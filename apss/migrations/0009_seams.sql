-- The seams between write transactions and providers (issue "Money-safe seams").
-- Order and payment statuses get CHECK constraints (a table rebuild: SQLite cannot add one to an
-- existing table); provider events are de-duplicated per merchant; every provider id a payment
-- acquires is kept; attempts say which operation they were and how it ended; refunds can wait
-- for the janitor; a payment closed on our side is closed at its provider too.

CREATE TABLE orders_new (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    player_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'delivering', 'fulfilled', 'expired', 'canceled',
                                           'failed', 'partially_refunded', 'refunded')),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    currency TEXT NOT NULL,
    channel TEXT NOT NULL,
    merchant_order_ref TEXT,
    metadata TEXT NOT NULL,         -- JSON {str: str}
    return_url TEXT,
    checkout_token TEXT NOT NULL UNIQUE,
    payment_id TEXT,
    expires_at_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    fx TEXT
) STRICT;
INSERT INTO orders_new SELECT id, merchant_id, player_id, status, amount, currency, channel, merchant_order_ref,
    metadata, return_url, checkout_token, payment_id, expires_at_ms, created_at_ms, updated_at_ms, fx FROM orders;
DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;
CREATE UNIQUE INDEX orders_merchant_ref ON orders (merchant_id, merchant_order_ref)
    WHERE merchant_order_ref IS NOT NULL;
CREATE INDEX orders_merchant ON orders (merchant_id, id);
CREATE INDEX orders_player ON orders (merchant_id, player_id, id);
CREATE INDEX orders_pending_expiry ON orders (expires_at_ms) WHERE status = 'pending';
CREATE INDEX orders_paid_open ON orders (updated_at_ms) WHERE status IN ('paid', 'delivering');

CREATE TABLE payments_new (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id),
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    channel TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('requires_action', 'processing', 'succeeded', 'failed', 'canceled',
                                           'unknown')),
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    provider_ref TEXT,              -- the first id the provider gave; every id is in payment_refs
    next_action TEXT,               -- JSON or NULL
    failure_code TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    -- Closing at the provider after the order ended unpaid: NULL (nothing to close), 'pending'
    -- (the closer job will ask the channel), 'done', 'failed' (given up; an alert was raised).
    close_state TEXT CHECK (close_state IN ('pending', 'done', 'failed')),
    close_attempts INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO payments_new (id, order_id, merchant_id, channel, status, amount, currency, provider_ref, next_action,
    failure_code, created_at_ms, updated_at_ms)
    SELECT id, order_id, merchant_id, channel, status, amount, currency, provider_ref, next_action, failure_code,
    created_at_ms, updated_at_ms FROM payments;
DROP TABLE payments;
ALTER TABLE payments_new RENAME TO payments;
CREATE UNIQUE INDEX payments_provider_ref ON payments (channel, provider_ref)
    WHERE provider_ref IS NOT NULL;
CREATE INDEX payments_order ON payments (order_id);
CREATE INDEX payments_open ON payments (created_at_ms)
    WHERE status IN ('unknown', 'requires_action', 'processing', 'canceled');
CREATE INDEX payments_to_close ON payments (updated_at_ms) WHERE close_state = 'pending';

-- Every id a payment acquired at its provider (Stripe session, intent and charge; PayPal order
-- and capture; Alipay and WeChat trade numbers): callbacks, refunds and disputes match on any.
-- One id belongs to one payment of a channel (the primary key); a clash is an anomaly.
CREATE TABLE payment_refs (
    channel TEXT NOT NULL,
    provider_ref TEXT NOT NULL,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, provider_ref)
) STRICT, WITHOUT ROWID;
INSERT INTO payment_refs (channel, provider_ref, payment_id, created_at_ms)
    SELECT channel, provider_ref, id, created_at_ms FROM payments WHERE provider_ref IS NOT NULL;
CREATE INDEX payment_refs_payment ON payment_refs (payment_id);

-- De-duplicated per merchant: two merchants sharing one provider account both receive every
-- event, and one merchant's copy must never make the other's a duplicate.
CREATE TABLE provider_events_new (
    merchant_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payment_id TEXT,
    result TEXT NOT NULL,           -- received | applied | stale | anomaly | unmatched | approved
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, channel, event_id)
) STRICT, WITHOUT ROWID;
INSERT INTO provider_events_new SELECT merchant_id, channel, event_id, kind, payment_id, result, received_at_ms
    FROM provider_events;
DROP TABLE provider_events;
ALTER TABLE provider_events_new RENAME TO provider_events;

-- Every provider call the gateway made, by operation, classified.
CREATE TABLE payment_attempts_new (
    seq INTEGER PRIMARY KEY,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    channel TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('create_payment', 'refund', 'capture', 'query_payment',
                                                 'query_refund', 'cancel_payment', 'charge_saved_method')),
    outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'unknown')),
    error_code TEXT,
    provider_code TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;
INSERT INTO payment_attempts_new (seq, payment_id, channel, operation, outcome, error_code, created_at_ms)
    SELECT seq, payment_id, channel, 'create_payment',
    CASE outcome WHEN 'created' THEN 'succeeded' WHEN 'timeout' THEN 'unknown' ELSE 'failed' END,
    error_code, created_at_ms FROM payment_attempts;
DROP TABLE payment_attempts;
ALTER TABLE payment_attempts_new RENAME TO payment_attempts;
CREATE INDEX payment_attempts_payment ON payment_attempts (payment_id, seq);

-- Refunds whose outcome is unknown are asked about by the janitor; refunds APSS makes by itself
-- (a late payment it cannot accept) are queued for the refund sender.
ALTER TABLE refunds ADD COLUMN checks_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE refunds ADD COLUMN next_check_at_ms INTEGER;
ALTER TABLE refunds ADD COLUMN queued INTEGER NOT NULL DEFAULT 0 CHECK (queued IN (0, 1));
CREATE INDEX refunds_queued ON refunds (created_at_ms) WHERE queued = 1;

-- What becomes of a payment that succeeds for an order that cannot take it.
ALTER TABLE merchant_finance ADD COLUMN late_payment TEXT NOT NULL DEFAULT 'refund'
    CHECK (late_payment IN ('refund', 'alert'));

-- Channels per merchant: sealed credentials, routing, every attempt to create a payment, and
-- the janitor's schedule of provider status queries. Merchants get their settlement currency.

ALTER TABLE merchants ADD COLUMN currency TEXT NOT NULL DEFAULT 'USD';

CREATE TABLE channel_settings (
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    channel TEXT NOT NULL,
    secrets_sealed TEXT NOT NULL,   -- AES-GCM sealed JSON of the secret fields
    public_settings TEXT NOT NULL,  -- JSON of the non-secret fields (returned by the API)
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, channel)
) STRICT, WITHOUT ROWID;

CREATE TABLE channel_routing (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    routing TEXT NOT NULL,          -- JSON {"default": [...], "by_currency": {...}, "by_country": {...}}
    updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE payment_attempts (
    seq INTEGER PRIMARY KEY,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    channel TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('created', 'failed', 'timeout')),
    error_code TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX payment_attempts_payment ON payment_attempts (payment_id, seq);

CREATE TABLE payment_checks (
    payment_id TEXT PRIMARY KEY REFERENCES payments (id),
    checks_done INTEGER NOT NULL,
    next_check_at_ms INTEGER,
    gave_up_at_ms INTEGER,
    last_status TEXT
) STRICT, WITHOUT ROWID;

CREATE INDEX payments_open ON payments (created_at_ms)
    WHERE status IN ('unknown', 'requires_action', 'processing', 'canceled');

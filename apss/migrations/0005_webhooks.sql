-- Merchant webhooks (an outbox) and deliveries to the game.
-- An event is written in the same transaction as the change it reports, with one pending
-- delivery per enabled endpoint subscribed to its type; a job sends them after commit.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    url TEXT NOT NULL,
    events TEXT NOT NULL,                   -- JSON list of event types, or ["*"]
    secret_sealed TEXT NOT NULL,            -- AES-GCM, context = endpoint id
    previous_secret_sealed TEXT,            -- still signs (a second v1) during a rotation...
    previous_secret_expires_at_ms INTEGER,  -- ...until this time
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    disabled_reason TEXT,                   -- api | failing_too_long
    last_succeeded_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant_id, id);

CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    type TEXT NOT NULL,
    payload BLOB NOT NULL,                  -- the envelope, exactly the bytes that are signed and sent
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX webhook_events_merchant ON webhook_events (merchant_id, created_at_ms);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    event_id TEXT NOT NULL REFERENCES webhook_events (id),
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at_ms INTEGER,             -- NULL once the delivery is final
    last_status_code INTEGER,
    last_error TEXT,
    created_at_ms INTEGER NOT NULL,         -- retries stop retry_window_s after this
    delivered_at_ms INTEGER
) STRICT;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id, id);

-- Goods the game itself delivers: acknowledged by the game (pushed by webhook or polled).
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    order_id TEXT NOT NULL UNIQUE REFERENCES orders (id),
    player_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'acknowledged')),
    payload TEXT NOT NULL,                  -- JSON: the items and what each unit grants
    attempts INTEGER NOT NULL DEFAULT 0,    -- pushes (delivery.pending events) so far
    next_push_at_ms INTEGER,                -- the next re-send while unacknowledged
    alerted_at_ms INTEGER,                  -- the paid-but-not-delivered alert, once
    created_at_ms INTEGER NOT NULL,
    acknowledged_at_ms INTEGER
) STRICT;
CREATE INDEX deliveries_merchant ON deliveries (merchant_id, status, id);
CREATE INDEX deliveries_push_due ON deliveries (next_push_at_ms) WHERE status = 'pending';

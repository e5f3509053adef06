-- Core schema: merchants and keys, catalog, orders with their items, payments and events,
-- idempotency keys, provider callbacks, player goods, alerts, and the sandbox provider's state.
-- Times are integer milliseconds since the Unix epoch (UTC); amounts are integer minor units.

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE merchants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('test', 'live')),
    sandbox_webhook_secret_sealed TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    key_hash TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) STRICT;
CREATE INDEX api_keys_merchant ON api_keys (merchant_id);

CREATE TABLE products (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    prices TEXT NOT NULL,           -- JSON {"USD": 499}
    stock INTEGER CHECK (stock IS NULL OR stock >= 0),  -- free units; NULL = unlimited
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    purchase_limit INTEGER CHECK (purchase_limit IS NULL OR purchase_limit >= 1),
    grants TEXT NOT NULL,           -- JSON list of grants for one unit
    active INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (merchant_id, sku)
) STRICT;
CREATE INDEX products_merchant ON products (merchant_id, id);

CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    player_id TEXT NOT NULL,
    status TEXT NOT NULL,
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
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX orders_merchant_ref ON orders (merchant_id, merchant_order_ref)
    WHERE merchant_order_ref IS NOT NULL;
CREATE INDEX orders_merchant ON orders (merchant_id, id);
CREATE INDEX orders_player ON orders (merchant_id, player_id, id);
CREATE INDEX orders_pending_expiry ON orders (expires_at_ms) WHERE status = 'pending';

CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders (id),
    line INTEGER NOT NULL,
    product_id TEXT NOT NULL REFERENCES products (id),
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity >= 1),
    unit_amount INTEGER NOT NULL CHECK (unit_amount >= 0),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    grants TEXT NOT NULL,           -- what one unit delivers, frozen at purchase
    PRIMARY KEY (order_id, line)
) STRICT, WITHOUT ROWID;
CREATE INDEX order_items_product ON order_items (product_id);

CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id),
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    provider_ref TEXT,
    next_action TEXT,               -- JSON or NULL
    failure_code TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX payments_provider_ref ON payments (channel, provider_ref)
    WHERE provider_ref IS NOT NULL;
CREATE INDEX payments_order ON payments (order_id);

CREATE TABLE order_events (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id),
    type TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    cause TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX order_events_order ON order_events (order_id, id);

-- Every verified provider callback event, once: the primary key is the de-duplication.
CREATE TABLE provider_events (
    channel TEXT NOT NULL,
    event_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payment_id TEXT,
    result TEXT NOT NULL,           -- applied | stale | anomaly | ignored
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, event_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    merchant_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    response_status INTEGER,
    response_body BLOB,
    resume TEXT,                    -- what finishes a 'running' request after a crash
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at_ms);
CREATE INDEX idempotency_keys_running ON idempotency_keys (state) WHERE state = 'running';

CREATE TABLE inventory_items (
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity >= 0),
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, player_id, sku)
) STRICT, WITHOUT ROWID;

CREATE TABLE memberships (
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, player_id, sku)
) STRICT, WITHOUT ROWID;

CREATE TABLE entitlements (
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    order_id TEXT NOT NULL,
    granted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, player_id, sku)
) STRICT, WITHOUT ROWID;

-- Balances may only go below zero by a refund clawback (money issue); game debits never do.
CREATE TABLE wallet_balances (
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, player_id, currency)
) STRICT, WITHOUT ROWID;

CREATE TABLE wallet_transactions (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount INTEGER NOT NULL,        -- signed: credit > 0, debit < 0
    balance_after INTEGER NOT NULL,
    reason TEXT,
    order_id TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX wallet_transactions_player ON wallet_transactions (merchant_id, player_id, id);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    merchant_id TEXT,
    kind TEXT NOT NULL,             -- e.g. amount_mismatch, late_payment_out_of_stock
    severity TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    object_id TEXT,
    message TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    resolved_at_ms INTEGER
) STRICT;
CREATE INDEX alerts_merchant ON alerts (merchant_id, id);

-- The sandbox provider's own records: which payments its payer completed, and the signed
-- callbacks it still has to send (its outbox; delivered after commit, retried with backoff).
CREATE TABLE sandbox_payments (
    payment_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    failure_code TEXT,
    completed_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE sandbox_callbacks (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    body BLOB NOT NULL,
    deliver_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at_ms INTEGER,
    gave_up_at_ms INTEGER,
    last_error TEXT
) STRICT;
CREATE INDEX sandbox_callbacks_due ON sandbox_callbacks (deliver_at_ms)
    WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL;

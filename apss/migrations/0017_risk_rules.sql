-- Risk control: rules as data, lists, velocity counters kept in the write path, every decision
-- stored; orders gain the status `in_review` (a table rebuild: SQLite cannot change a CHECK).

CREATE TABLE orders_new (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    player_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'delivering', 'fulfilled', 'expired', 'canceled',
                                           'failed', 'partially_refunded', 'refunded', 'in_review')),
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
    fx TEXT,
    subscription_id TEXT
) STRICT;
INSERT INTO orders_new SELECT id, merchant_id, player_id, status, amount, currency, channel, merchant_order_ref,
    metadata, return_url, checkout_token, payment_id, expires_at_ms, created_at_ms, updated_at_ms, fx,
    subscription_id FROM orders;
DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;
CREATE UNIQUE INDEX orders_merchant_ref ON orders (merchant_id, merchant_order_ref)
    WHERE merchant_order_ref IS NOT NULL;
CREATE INDEX orders_merchant ON orders (merchant_id, id);
CREATE INDEX orders_player ON orders (merchant_id, player_id, id);
CREATE INDEX orders_pending_expiry ON orders (expires_at_ms) WHERE status = 'pending';
CREATE INDEX orders_paid_open ON orders (updated_at_ms) WHERE status IN ('paid', 'delivering');
CREATE INDEX orders_subscription ON orders (subscription_id) WHERE subscription_id IS NOT NULL;
CREATE INDEX orders_in_review ON orders (merchant_id, id) WHERE status = 'in_review';

-- A merchant's rule set, replaced whole by PUT /v1/risk/rules. A merchant with no row in
-- risk_rule_sets runs the default rules (services/risk/engine.py).
CREATE TABLE risk_rule_sets (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE risk_rules (
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    position INTEGER NOT NULL CHECK (position >= 0),
    name TEXT NOT NULL,
    rule TEXT NOT NULL,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    PRIMARY KEY (merchant_id, position)
) STRICT, WITHOUT ROWID;

-- List entries: built-in lists (blocked_players, blocked_ips, ...) and the merchant's own
-- (`@name` in rules). `value` is what is matched: an email as a keyed hash (`display` masked),
-- an IP range in its normalised CIDR form.
CREATE TABLE risk_list_items (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    list TEXT NOT NULL,
    value TEXT NOT NULL,
    display TEXT NOT NULL,
    reason TEXT,
    created_by TEXT NOT NULL,
    expires_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX risk_list_items_list ON risk_list_items (merchant_id, list, id);

-- The risk facts an order came with (personal data: the privacy work seals and erases these).
CREATE TABLE risk_order_facts (
    order_id TEXT PRIMARY KEY REFERENCES orders (id),
    merchant_id TEXT NOT NULL,
    ip TEXT,
    device_id TEXT,
    email_hash TEXT,
    email_domain TEXT,
    billing_country TEXT,
    three_ds INTEGER NOT NULL DEFAULT 0 CHECK (three_ds IN (0, 1)),  -- a rule asked for 3-D Secure
    hold INTEGER NOT NULL DEFAULT 0 CHECK (hold IN (0, 1))           -- paid, it waits in in_review
) STRICT, WITHOUT ROWID;

-- Every decision: at order creation (`order`) and again when the provider's callback adds facts
-- (`callback`). rules_fired and attributes are JSON.
CREATE TABLE risk_decisions (
    seq INTEGER PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id),
    merchant_id TEXT NOT NULL,
    stage TEXT NOT NULL CHECK (stage IN ('order', 'callback')),
    score INTEGER NOT NULL CHECK (score BETWEEN 0 AND 100),
    action TEXT NOT NULL CHECK (action IN ('allow', 'review', 'block', 'require_3ds')),
    rules_fired TEXT NOT NULL,
    attributes TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX risk_decisions_order ON risk_decisions (order_id, seq);

-- Velocity counters, bucketed: minute buckets (grain 60) for the hour window, hour buckets
-- (grain 3600) for the day and week windows. `key` is a keyed hash of the player, IP, device...
CREATE TABLE risk_counters (
    merchant_id TEXT NOT NULL,
    dimension TEXT NOT NULL,
    key TEXT NOT NULL,
    grain_s INTEGER NOT NULL,
    bucket INTEGER NOT NULL,        -- unix seconds // grain_s
    value INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, dimension, key, grain_s, bucket)
) STRICT, WITHOUT ROWID;
-- Distinct members seen per key and bucket (players per IP, cards per player...).
CREATE TABLE risk_distinct (
    merchant_id TEXT NOT NULL,
    dimension TEXT NOT NULL,
    key TEXT NOT NULL,
    grain_s INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (merchant_id, dimension, key, grain_s, bucket, member)
) STRICT, WITHOUT ROWID;
CREATE INDEX risk_counters_age ON risk_counters (bucket, grain_s);
CREATE INDEX risk_distinct_age ON risk_distinct (bucket, grain_s);

-- When APSS first saw a player of a merchant (the player's account age for the rules).
CREATE TABLE risk_players (
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, player_id)
) STRICT, WITHOUT ROWID;

-- The optional pre-payment check: a merchant URL APSS asks before charging (signed like merchant
-- webhooks with its own secret, sealed), with a bounded timeout and a policy when it times out.
CREATE TABLE risk_prechecks (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    url TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    timeout_ms INTEGER NOT NULL CHECK (timeout_ms BETWEEN 100 AND 10000),
    on_timeout TEXT NOT NULL CHECK (on_timeout IN ('allow', 'block')),
    updated_at_ms INTEGER NOT NULL
) STRICT;

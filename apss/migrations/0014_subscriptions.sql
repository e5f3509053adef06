-- Subscriptions: a membership product with a billing plan is billed every period. The first
-- order is paid like any order; each later period has one renewal order (one per subscription and
-- period, enforced below), charged on the payment method the first payment saved, and charged
-- again on a retry (each charge attempt is a new payment of that same order).
ALTER TABLE products ADD COLUMN billing TEXT;          -- JSON {"interval", "interval_count"}; NULL for other products
ALTER TABLE orders ADD COLUMN subscription_id TEXT;    -- first, renewal and proration orders
CREATE INDEX orders_subscription ON orders (subscription_id) WHERE subscription_id IS NOT NULL;

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    player_id TEXT NOT NULL,
    product_id TEXT NOT NULL REFERENCES products (id),
    next_product_id TEXT REFERENCES products (id),      -- a change that applies at the next renewal
    currency TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),        -- per period, of the current plan
    channel TEXT NOT NULL,
    fallback_channel TEXT,
    metadata TEXT NOT NULL,                             -- JSON {str: str}, copied onto every order
    status TEXT NOT NULL CHECK (status IN ('incomplete', 'active', 'past_due', 'canceled', 'incomplete_expired')),
    billing TEXT NOT NULL,                              -- the plan's billing, frozen at creation
    anchor_ms INTEGER NOT NULL,                         -- start of period 0: every period end comes from it
    period_index INTEGER NOT NULL CHECK (period_index >= 0),
    current_period_start_ms INTEGER NOT NULL,
    current_period_end_ms INTEGER NOT NULL CHECK (current_period_end_ms > current_period_start_ms),
    cancel_at_period_end INTEGER NOT NULL CHECK (cancel_at_period_end IN (0, 1)),
    canceled_at_ms INTEGER,
    activated_at_ms INTEGER,
    method_payment_id TEXT,                             -- the paid payment whose saved method renewals charge
    latest_order_id TEXT,
    first_failure_ms INTEGER,                           -- of the current period's renewal
    retries INTEGER NOT NULL DEFAULT 0 CHECK (retries >= 0),
    charge_attempts INTEGER NOT NULL DEFAULT 0,         -- renewal charges made in its life (primary and fallback)
    next_charge_at_ms INTEGER,                          -- when the renewal job acts next; NULL when nothing is due
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX subscriptions_merchant ON subscriptions (merchant_id, id);
CREATE INDEX subscriptions_due ON subscriptions (next_charge_at_ms) WHERE next_charge_at_ms IS NOT NULL;

-- One order per subscription and period (period 0: the first order, and a proration order is kind
-- 'proration' of the period it was made in).
CREATE TABLE subscription_orders (
    order_id TEXT PRIMARY KEY REFERENCES orders (id),
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    kind TEXT NOT NULL CHECK (kind IN ('first', 'renewal', 'proration')),
    period_index INTEGER NOT NULL CHECK (period_index >= 0),
    period_start_ms INTEGER NOT NULL,
    period_end_ms INTEGER NOT NULL,                     -- the membership runs to it once paid
    product_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (subscription_id, period_index, kind)
) STRICT;

CREATE TABLE subscription_events (
    id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    type TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    cause TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX subscription_events_of ON subscription_events (subscription_id, created_at_ms);

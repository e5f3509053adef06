-- Promotions (automatic ones and coupons, flash sales with their own units) and what each order
-- redeemed. The counters are kept in the promotion's row by the single writer and bounded by
-- CHECK constraints, so a limit can never be overrun even by a bug in the check before it.
CREATE TABLE promotions (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    name TEXT NOT NULL,
    code TEXT,                      -- as the merchant wrote it; NULL for an automatic promotion
    code_key TEXT,                  -- upper(code): codes are unique per merchant, case-insensitively
    percent_off_bps INTEGER CHECK (percent_off_bps IS NULL OR percent_off_bps BETWEEN 1 AND 10000),
    amount_off TEXT,                -- JSON {"USD": 100}, per unit; NULL for a percent promotion
    product_ids TEXT NOT NULL,      -- JSON list; with categories: empty both = every product
    categories TEXT NOT NULL,       -- JSON list
    starts_at_ms INTEGER,
    ends_at_ms INTEGER,
    redemptions_max INTEGER CHECK (redemptions_max IS NULL OR redemptions_max >= 1),
    redemptions_per_player_max INTEGER CHECK (redemptions_per_player_max IS NULL OR redemptions_per_player_max >= 1),
    units_max INTEGER CHECK (units_max IS NULL OR units_max >= 1),
    stackable INTEGER NOT NULL CHECK (stackable IN (0, 1)),
    active INTEGER NOT NULL CHECK (active IN (0, 1)),
    redemptions INTEGER NOT NULL DEFAULT 0,   -- orders holding or having taken it
    units_used INTEGER NOT NULL DEFAULT 0,    -- units of those orders' discounted lines
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    CHECK ((percent_off_bps IS NULL) <> (amount_off IS NULL)),
    CHECK (redemptions >= 0 AND (redemptions_max IS NULL OR redemptions <= redemptions_max)),
    CHECK (units_used >= 0 AND (units_max IS NULL OR units_used <= units_max))
) STRICT;
CREATE UNIQUE INDEX promotions_code ON promotions (merchant_id, code_key) WHERE code_key IS NOT NULL;
CREATE INDEX promotions_merchant ON promotions (merchant_id, id);

-- One row per promotion an order redeemed: held from the order's creation (with its stock),
-- taken when it is paid, released when it ends unpaid. A refund leaves it taken.
CREATE TABLE order_promotions (
    order_id TEXT NOT NULL REFERENCES orders (id),
    position INTEGER NOT NULL,      -- the order in which the promotions were applied
    promotion_id TEXT NOT NULL REFERENCES promotions (id),
    player_id TEXT NOT NULL,
    discount INTEGER NOT NULL CHECK (discount > 0),
    units INTEGER NOT NULL CHECK (units >= 1),
    state TEXT NOT NULL CHECK (state IN ('held', 'taken', 'released')),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (order_id, position),
    UNIQUE (order_id, promotion_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX order_promotions_player ON order_promotions (promotion_id, player_id) WHERE state <> 'released';

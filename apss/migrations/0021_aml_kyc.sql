-- AML monitoring, player and merchant KYC, minors' spending limits.

-- Merchant KYC, set by the admin. Merchants that exist before this migration are verified (the
-- default fills them); services/merchants/keys.py makes test merchants verified and live ones
-- unverified. Settlement batches of a merchant that is not verified wait for their payout.
ALTER TABLE merchants ADD COLUMN kyc_status TEXT NOT NULL DEFAULT 'verified'
    CHECK (kyc_status IN ('unverified', 'pending', 'verified', 'rejected'));

-- A player's KYC as the merchant set it: status, the verified birth date or age, jurisdiction.
CREATE TABLE player_kyc (
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    player_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('unverified', 'pending', 'verified', 'rejected')),
    birth_date_sealed TEXT,         -- YYYY-MM-DD, sealed (AES-GCM, context merchant:player): personal data
    age INTEGER CHECK (age BETWEEN 0 AND 150),
    jurisdiction TEXT,              -- e.g. CN (a minors' limit preset)
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, player_id)
) STRICT, WITHOUT ROWID;

-- A merchant's own minors' limit presets per jurisdiction (the built-in ones live in
-- apss/domain/risk/kyc.py); bands is JSON [{min_age, max_age, per_payment, per_month, currency}].
CREATE TABLE minor_limit_presets (
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    jurisdiction TEXT NOT NULL,
    timezone TEXT NOT NULL,
    bands TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, jurisdiction)
) STRICT, WITHOUT ROWID;

-- What an order of a player under a minors' band counts against its monthly limit: its amount
-- converted into the band's currency at the order's rate, in its calendar month (jurisdiction
-- time zone). Counted while the order is pending or paid.
CREATE TABLE minor_spend (
    order_id TEXT PRIMARY KEY REFERENCES orders (id),
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    month TEXT NOT NULL,            -- YYYY-MM in the jurisdiction's time zone
    currency TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    created_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX minor_spend_player ON minor_spend (merchant_id, player_id, month);

-- A merchant's AML thresholds; a NULL column takes the config default ([aml]).
CREATE TABLE aml_settings (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    daily_threshold INTEGER CHECK (daily_threshold >= 0),
    rolling_30d_threshold INTEGER CHECK (rolling_30d_threshold >= 0),
    structuring_threshold INTEGER CHECK (structuring_threshold >= 0),
    structuring_count INTEGER CHECK (structuring_count >= 2),
    structuring_window_h INTEGER CHECK (structuring_window_h BETWEEN 1 AND 168),
    structuring_margin_bps INTEGER CHECK (structuring_margin_bps BETWEEN 1 AND 10000),
    kyc_payment_threshold INTEGER CHECK (kyc_payment_threshold >= 0),
    kyc_30d_threshold INTEGER CHECK (kyc_30d_threshold >= 0),
    updated_at_ms INTEGER NOT NULL
) STRICT;

-- AML cases: one open (open or investigating) case per player and kind; later hits append to it.
CREATE TABLE aml_cases (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    player_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('daily_threshold', 'rolling_30d_threshold', 'structuring')),
    status TEXT NOT NULL CHECK (status IN ('open', 'investigating', 'reported', 'closed')),
    currency TEXT NOT NULL,         -- the merchant's: amounts below are in it
    hits INTEGER NOT NULL CHECK (hits >= 0),  -- 0 only inside the transaction that opens it
    amount_total INTEGER NOT NULL CHECK (amount_total >= 0),   -- sum of the hits' payments
    note TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX aml_cases_one_open ON aml_cases (merchant_id, player_id, kind)
    WHERE status IN ('open', 'investigating');
CREATE INDEX aml_cases_merchant ON aml_cases (merchant_id, id);

-- Each payment that hit a case's rule: what was paid, the window's total with it, the threshold.
CREATE TABLE aml_case_hits (
    case_id TEXT NOT NULL REFERENCES aml_cases (id),
    seq INTEGER NOT NULL CHECK (seq >= 1),
    order_id TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    amount INTEGER NOT NULL,        -- the payment, in the merchant's currency
    observed INTEGER NOT NULL,      -- the window's total (amount) or count (structuring) with it
    threshold INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (case_id, seq)
) STRICT, WITHOUT ROWID;

-- Every status move of a case, with the merchant's note.
CREATE TABLE aml_case_events (
    case_id TEXT NOT NULL REFERENCES aml_cases (id),
    seq INTEGER NOT NULL CHECK (seq >= 1),
    from_status TEXT,
    to_status TEXT NOT NULL,
    note TEXT,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (case_id, seq)
) STRICT, WITHOUT ROWID;

-- Paid orders waiting in in_review for the player's KYC (reason kyc_required). `risk_hold`: a
-- risk rule holds it too, so verification alone does not deliver it.
CREATE TABLE kyc_holds (
    order_id TEXT PRIMARY KEY REFERENCES orders (id),
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('held', 'released', 'rejected')),
    risk_hold INTEGER NOT NULL CHECK (risk_hold IN (0, 1)),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX kyc_holds_player ON kyc_holds (merchant_id, player_id) WHERE status = 'held';

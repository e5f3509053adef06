-- Disputes (chargebacks) with their own record: one per (merchant, channel, provider dispute id),
-- created by the provider's first dispute event; the chargeback is the forced refund in
-- `refund_id` (reason `chargeback`, ledger kind `chargeback`), NULL for an inquiry that moved no
-- money. The policy applied is copied onto the record as it was then (revoke, player block).
CREATE TABLE disputes (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    order_id TEXT NOT NULL REFERENCES orders (id),
    payment_id TEXT NOT NULL REFERENCES payments (id),
    channel TEXT NOT NULL,
    provider_dispute_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    reason TEXT,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('needs_response', 'under_review', 'won', 'lost')),
    inquiry INTEGER NOT NULL DEFAULT 0 CHECK (inquiry IN (0, 1)),
    evidence_due_by_ms INTEGER,
    refund_id TEXT REFERENCES refunds (id),
    revoke_goods INTEGER NOT NULL CHECK (revoke_goods IN (0, 1)),
    player_block_requested INTEGER NOT NULL CHECK (player_block_requested IN (0, 1)),
    evidence_submitted_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    closed_at_ms INTEGER,
    UNIQUE (merchant_id, channel, provider_dispute_id)
) STRICT;
CREATE INDEX disputes_by_merchant ON disputes (merchant_id, id);
CREATE INDEX disputes_by_player ON disputes (merchant_id, player_id);
CREATE INDEX disputes_by_order ON disputes (order_id);

-- Every step of a dispute, with its cause (callback:<event id>, api, policy).
CREATE TABLE dispute_events (
    seq INTEGER PRIMARY KEY,
    dispute_id TEXT NOT NULL REFERENCES disputes (id),
    type TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT,
    cause TEXT NOT NULL,
    detail TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX dispute_events_by_dispute ON dispute_events (dispute_id, seq);

-- A merchant's dispute policy; without a row the defaults hold (revoke the goods, no player block).
CREATE TABLE dispute_policies (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    revoke_goods INTEGER NOT NULL CHECK (revoke_goods IN (0, 1)),
    block_player INTEGER NOT NULL CHECK (block_player IN (0, 1)),
    updated_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- The sandbox provider's own disputes (what it raised, its status, the evidence it was sent).
CREATE TABLE sandbox_disputes (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('needs_response', 'under_review', 'won', 'lost')),
    evidence TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

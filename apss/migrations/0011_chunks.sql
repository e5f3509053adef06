-- Settlement in chunks: a cut-off's batches are built over several write transactions of at
-- most database.chunk_rows_max ledger transactions each, resumable after a crash.

-- A batch being built (complete = 0) is invisible to the API and to payout; its totals so far
-- are in its columns, and the payments' gross per channel (for the reserve) in gross_by_channel.
ALTER TABLE settlements ADD COLUMN complete INTEGER NOT NULL DEFAULT 1 CHECK (complete IN (0, 1));
ALTER TABLE settlements ADD COLUMN gross_by_channel TEXT;  -- JSON {"sandbox": 1000}, while building
CREATE INDEX settlements_building ON settlements (merchant_id, period_end_ms) WHERE complete = 0;

-- The cut-off being settled and the last ledger transaction (created_at_ms, id) taken so far;
-- NULL when none is in progress. The markers move only when its last chunk commits.
ALTER TABLE settlement_schedules ADD COLUMN settling_cutoff_at_ms INTEGER;
ALTER TABLE settlement_schedules ADD COLUMN settling_after_ms INTEGER;
ALTER TABLE settlement_schedules ADD COLUMN settling_after_id TEXT;

-- The chunked scan walks a merchant's ledger transactions in (created_at_ms, id) order.
DROP INDEX ledger_transactions_merchant;
CREATE INDEX ledger_transactions_merchant ON ledger_transactions (merchant_id, created_at_ms, id);

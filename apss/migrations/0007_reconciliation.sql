-- Reconciliation (provider statements matched against our payments and refunds) and the
-- daily/weekly reports per merchant. Times are integer milliseconds since the Unix epoch (UTC).

-- One imported statement. The same file (by SHA-256) imported again answers this run again.
CREATE TABLE reconciliation_runs (
    id TEXT PRIMARY KEY,                    -- rcn_...
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    channel TEXT NOT NULL,
    source_name TEXT NOT NULL,              -- what the uploader called the file
    source_sha256 TEXT NOT NULL,
    span_start_ms INTEGER,                  -- the statement's time span [start, end); NULL when
    span_end_ms INTEGER,                    -- its lines carry no times
    counts TEXT NOT NULL,                   -- JSON {"lines", "skipped", "matched", "amount_mismatch", ...}
    created_at_ms INTEGER NOT NULL,
    UNIQUE (merchant_id, channel, source_sha256)
) STRICT;
CREATE INDEX reconciliation_runs_merchant ON reconciliation_runs (merchant_id, id);

-- One outcome per statement line of kind payment or refund, plus one per record of ours in the
-- span that the statement lacks (missing_at_provider, line NULL).
CREATE TABLE reconciliation_items (
    run_id TEXT NOT NULL REFERENCES reconciliation_runs (id),
    seq INTEGER NOT NULL,
    line INTEGER,                           -- 1-based index of the line in the statement
    status TEXT NOT NULL CHECK (status IN ('matched', 'amount_mismatch', 'currency_mismatch', 'missing_here',
                                           'missing_at_provider', 'fee_mismatch')),
    kind TEXT NOT NULL CHECK (kind IN ('payment', 'refund')),
    provider_ref TEXT,
    payment_id TEXT,
    refund_id TEXT,
    ours_amount INTEGER,                    -- minor units; refunds positive on both sides
    theirs_amount INTEGER,
    ours_fee INTEGER,
    theirs_fee INTEGER,
    currency TEXT,                          -- ours when we have the record, else theirs
    theirs_currency TEXT,
    detail TEXT,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;

-- Lookups by the provider's refund id; the checks' scans (paid not delivered, refunds stuck),
-- which raise an alert once per object and kind, so earlier alerts are found fast.
CREATE INDEX refunds_provider_ref ON refunds (provider_refund_ref) WHERE provider_refund_ref IS NOT NULL;
CREATE INDEX refunds_pending ON refunds (created_at_ms) WHERE status = 'pending';
CREATE INDEX orders_paid_open ON orders (updated_at_ms) WHERE status IN ('paid', 'delivering');
CREATE INDEX alerts_object ON alerts (object_id, kind);

CREATE TABLE reports (
    id TEXT PRIMARY KEY,                    -- rpt_...
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    period TEXT NOT NULL CHECK (period IN ('daily', 'weekly')),
    period_start_ms INTEGER NOT NULL,       -- UTC midnight (weekly: a Monday)
    period_end_ms INTEGER NOT NULL,
    body TEXT NOT NULL,                     -- JSON: totals by currency, by channel, by product
    created_at_ms INTEGER NOT NULL,
    UNIQUE (merchant_id, period, period_start_ms)
) STRICT;
CREATE INDEX reports_merchant ON reports (merchant_id, period, id);

-- Settlement: each merchant's cycle (daily, weekly, T+N, manual) with a cut-off in its own time
-- zone, minimum payout and rolling reserve; batches per merchant, currency and period, derived
-- from the ledger, with one line per ledger transaction (and reserve and carried lines).

CREATE TABLE settlement_schedules (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    cycle TEXT NOT NULL CHECK (cycle IN ('daily', 'weekly', 't_plus', 'manual')),
    weekday INTEGER CHECK (weekday BETWEEN 0 AND 6),      -- weekly: 0 = Monday
    t_plus_days INTEGER NOT NULL CHECK (t_plus_days BETWEEN 0 AND 365),
    cutoff_time TEXT NOT NULL,                          -- HH:MM, local
    timezone TEXT NOT NULL,                             -- IANA name, e.g. Asia/Shanghai
    minimum_payout TEXT NOT NULL,                       -- JSON {"USD": 1000}
    reserve_bps INTEGER NOT NULL CHECK (reserve_bps BETWEEN 0 AND 10000),
    reserve_hold_days INTEGER NOT NULL CHECK (reserve_hold_days BETWEEN 0 AND 3650),
    last_cutoff_at_ms INTEGER NOT NULL,                 -- the last cut-off settled (or skipped)
    settled_through_ms INTEGER NOT NULL,                -- the end of the activity settled so far
    updated_at_ms INTEGER NOT NULL,
    CHECK (cycle <> 'weekly' OR weekday IS NOT NULL)
) STRICT;
CREATE INDEX settlement_schedules_cycle ON settlement_schedules (cycle);

CREATE TABLE settlements (
    id TEXT PRIMARY KEY,                                -- stl_...
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    currency TEXT NOT NULL,
    period_start_ms INTEGER NOT NULL,                   -- activity in [start, end)
    period_end_ms INTEGER NOT NULL,                     -- the cut-off (T+N: the cut-off N days before)
    cutoff_at_ms INTEGER NOT NULL,                      -- when the batch was due
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'carried')),
    gross INTEGER NOT NULL,
    refunds INTEGER NOT NULL,
    chargebacks INTEGER NOT NULL,
    fees INTEGER NOT NULL,
    commission INTEGER NOT NULL,
    partner_shares INTEGER NOT NULL,
    reserve_held INTEGER NOT NULL CHECK (reserve_held >= 0),
    reserve_released INTEGER NOT NULL CHECK (reserve_released >= 0),
    carried_in INTEGER NOT NULL,
    net_payable INTEGER NOT NULL,
    reserve_release_at_ms INTEGER,                      -- when reserve_held is due back
    reserve_released_by TEXT REFERENCES settlements (id),
    carried_into TEXT REFERENCES settlements (id),      -- carried: the batch that took its net over
    payout_reference TEXT,
    paid_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (merchant_id, currency, period_end_ms),
    CHECK (period_start_ms < period_end_ms),
    CHECK (status <> 'paid' OR (payout_reference IS NOT NULL AND paid_at_ms IS NOT NULL AND net_payable > 0))
) STRICT;
CREATE INDEX settlements_merchant ON settlements (merchant_id, id);
CREATE INDEX settlements_reserve_open ON settlements (merchant_id, reserve_release_at_ms)
    WHERE reserve_held > 0 AND reserve_released_by IS NULL;
CREATE INDEX settlements_carried_open ON settlements (merchant_id)
    WHERE status = 'carried' AND carried_into IS NULL;

CREATE TABLE settlement_lines (
    settlement_id TEXT NOT NULL REFERENCES settlements (id),
    line INTEGER NOT NULL CHECK (line >= 1),
    kind TEXT NOT NULL CHECK (kind IN ('payment', 'refund', 'chargeback', 'reserve_hold', 'reserve_release',
                                       'adjustment', 'carried')),
    reference TEXT NOT NULL,                            -- payment/refund/adjustment id; a settlement for the rest
    order_id TEXT,
    channel TEXT,
    amount INTEGER NOT NULL,
    fee INTEGER NOT NULL,
    commission INTEGER NOT NULL,
    partner_shares INTEGER NOT NULL,
    net INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    PRIMARY KEY (settlement_id, line)
) STRICT, WITHOUT ROWID;
-- A ledger transaction is settled once, whatever happens to the markers.
CREATE UNIQUE INDEX settlement_lines_once ON settlement_lines (kind, reference)
    WHERE kind IN ('payment', 'refund', 'chargeback', 'adjustment');
CREATE INDEX settlement_lines_reference ON settlement_lines (reference);

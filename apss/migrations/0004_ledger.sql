-- Money: a double-entry ledger (append-only transactions of balanced entries, with balances
-- derived in the same transaction and checkable against the entries), refunds, and each
-- merchant's revenue share (platform commission, partner splits) and refund policy.

CREATE TABLE ledger_accounts (
    name TEXT NOT NULL,             -- e.g. merchant_payable:mch_..., provider_clearing:stripe:mch_...
    currency TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('asset', 'liability', 'revenue', 'expense', 'equity')),
    merchant_id TEXT,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, currency)
) STRICT, WITHOUT ROWID;
CREATE INDEX ledger_accounts_merchant ON ledger_accounts (merchant_id);

CREATE TABLE ledger_transactions (
    id TEXT PRIMARY KEY,
    merchant_id TEXT,
    kind TEXT NOT NULL,             -- payment_captured, refund, chargeback, adjustment, ...
    reference TEXT NOT NULL,        -- the payment, refund, dispute or adjustment it records
    memo TEXT,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (kind, reference)        -- a business event posts once
) STRICT;
CREATE INDEX ledger_transactions_merchant ON ledger_transactions (merchant_id, created_at_ms);

CREATE TABLE ledger_entries (
    seq INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL REFERENCES ledger_transactions (id),
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    debit INTEGER NOT NULL CHECK (debit >= 0),
    credit INTEGER NOT NULL CHECK (credit >= 0),
    CHECK ((debit = 0) <> (credit = 0)),
    FOREIGN KEY (account, currency) REFERENCES ledger_accounts (name, currency)
) STRICT;
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_account ON ledger_entries (account, currency);

-- Derived: sum(debit) - sum(credit) per account; kept in the posting transaction for fast
-- queries, and proven equal to the entries by `apss ledger check`.
CREATE TABLE ledger_balances (
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    debits INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    PRIMARY KEY (account, currency)
) STRICT, WITHOUT ROWID;

CREATE TABLE merchant_finance (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    commission_bps INTEGER NOT NULL CHECK (commission_bps BETWEEN 0 AND 10000),
    splits TEXT NOT NULL,           -- JSON [{"recipient": "publisher", "share_bps": 1000}]
    clawback_policy TEXT NOT NULL CHECK (clawback_policy IN ('refuse', 'debt')),
    updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE refunds (
    id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    order_id TEXT NOT NULL REFERENCES orders (id),
    payment_id TEXT NOT NULL REFERENCES payments (id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason TEXT,
    provider_refund_ref TEXT,
    failure_code TEXT,
    clawback TEXT,                  -- JSON: what was taken back, and how (none, taken, debt)
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX refunds_order ON refunds (order_id);
CREATE INDEX refunds_merchant ON refunds (merchant_id, id);

-- The sandbox provider closes payments, as real providers do when the closer asks (an order that
-- ended unpaid): a payer can no longer pay a closed one. It also keeps the refunds it executed,
-- keyed by our refund id (its idempotency key), to answer refund queries from that record.
CREATE TABLE sandbox_closed (
    payment_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    closed_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE sandbox_refunds (
    refund_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    provider_refund_ref TEXT NOT NULL UNIQUE,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    failure_code TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

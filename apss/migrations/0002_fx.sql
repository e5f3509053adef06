-- FX rates: global, set by the admin (API or CSV import), kept as history; for a pair the row
-- with the latest as_of_ms at or before "now" is the one in force. `rate` is a decimal string
-- (1 base = rate quote), never a float. Times are integer milliseconds since the epoch (UTC).
CREATE TABLE fx_rates (
    base TEXT NOT NULL,
    quote TEXT NOT NULL,
    rate TEXT NOT NULL,
    as_of_ms INTEGER NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('api', 'csv')),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (base, quote, as_of_ms)
) STRICT, WITHOUT ROWID;

-- The conversion an order was priced with (JSON: pair, rate as a string, its as_of), NULL when
-- the order was priced directly in its currency.
ALTER TABLE orders ADD COLUMN fx TEXT;

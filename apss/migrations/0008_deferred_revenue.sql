-- Virtual currency sold for money is deferred revenue until players spend it. Average-cost pools
-- per merchant, virtual currency and money currency: the units outstanding and the deferred value
-- (minor units) they carry; the ledger holds the same value in vc_deferred accounts.
CREATE TABLE vc_pools (
    merchant_id TEXT NOT NULL,
    vc TEXT NOT NULL,
    currency TEXT NOT NULL,
    units INTEGER NOT NULL CHECK (units >= 0),
    deferred INTEGER NOT NULL CHECK (deferred >= 0),
    PRIMARY KEY (merchant_id, vc, currency)
) STRICT, WITHOUT ROWID;

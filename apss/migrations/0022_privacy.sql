-- Privacy: erasures of players (by keyed hash only), and the audit log of changing actions.

-- One row per erased player: the pseudonym is the keyed hash (HMAC) of the original id, which is
-- never stored. `running` while the erasure's chunks are written; the same records are kept in
-- `<database>.erasures` beside the database, so a restored backup has them applied again at start.
CREATE TABLE erasures (
    merchant_id TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    requested_at_ms INTEGER NOT NULL,
    completed_at_ms INTEGER,
    PRIMARY KEY (merchant_id, pseudonym)
) STRICT, WITHOUT ROWID;

-- Every merchant and admin action that changes money, rules, lists, keys, KYC or personal data.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,                    -- aud_...
    actor TEXT NOT NULL CHECK (actor IN ('merchant', 'admin')),
    merchant_id TEXT,                       -- the merchant acting, or the one an admin acted on
    key_ref TEXT NOT NULL,                  -- sk_test_/sk_live_/adm_ + 8 hex of the key's SHA-256: never the key
    action TEXT NOT NULL,                   -- e.g. order.create, merchant.key_roll, player.erase
    object_id TEXT,                         -- players appear by pseudonym only
    status_code INTEGER NOT NULL,
    ip_sealed TEXT,                         -- client IP, sealed as personal data; erased after retention
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX audit_log_merchant ON audit_log (merchant_id, id);
CREATE INDEX audit_log_created ON audit_log (created_at_ms);

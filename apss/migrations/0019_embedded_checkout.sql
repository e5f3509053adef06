-- The embeddable checkout: publishable keys (public, so kept as they are: GET /v1/account shows
-- the merchant its key), the site origins a merchant embeds the checkout in, and which products a
-- publishable key may start a checkout for.

CREATE TABLE publishable_keys (
    key TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) STRICT;
-- One active publishable key per merchant: rolling revokes the old one in the same transaction.
CREATE UNIQUE INDEX publishable_keys_active ON publishable_keys (merchant_id) WHERE revoked_at_ms IS NULL;

-- Merchants made before this migration get a key of their own (192 random bits).
INSERT INTO publishable_keys (key, merchant_id, created_at_ms)
    SELECT 'pk_' || mode || '_' || lower(hex(randomblob(24))), id, created_at_ms FROM merchants;

-- JSON list of origins ("https://shop.example"), normalised when saved.
ALTER TABLE merchants ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';

ALTER TABLE products ADD COLUMN browser_sellable INTEGER NOT NULL DEFAULT 0 CHECK (browser_sellable IN (0, 1));

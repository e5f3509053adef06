-- Admin dashboard sessions, so a restart does not log the admin out. Only the SHA-256 of the
-- cookie's token is stored (a stolen database holds no usable cookie); the form (CSRF) token is
-- derived from the cookie's token, so it is not stored either. `merchant_id` is the merchant the
-- admin looked at last (the overview opens on it). Expired rows are refused and deleted.
CREATE TABLE admin_sessions (
    token_sha256 TEXT PRIMARY KEY CHECK (length(token_sha256) = 64),
    merchant_id TEXT,
    created_at_ms INTEGER NOT NULL CHECK (created_at_ms >= 0),
    expires_at_ms INTEGER NOT NULL CHECK (expires_at_ms > created_at_ms)
) STRICT;
CREATE INDEX admin_sessions_expiry ON admin_sessions (expires_at_ms);

-- A merchant's own API rate limit (admin: PATCH /v1/merchants/{id} {"rate_limit": ...}); NULL: the
-- server's [api] requests_per_s_max / burst_max. A game server selling a flash sale through one key
-- may need more than the default; a noisy tenant on a shared server less.
ALTER TABLE merchants ADD COLUMN rate_limit_per_s INTEGER CHECK (rate_limit_per_s IS NULL OR rate_limit_per_s >= 0);
ALTER TABLE merchants ADD COLUMN rate_limit_burst INTEGER CHECK (rate_limit_burst IS NULL OR rate_limit_burst >= 1);

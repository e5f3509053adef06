-- The players' marks gain the kind 'ip' (the order's IP address, as the risk engine's keyed hash,
-- never the address): the attributes ip_age_s (seconds since the player's first order from the
-- order's IP), player_devices_seen and player_ips_seen (the distinct devices and IPs the player
-- was seen with before) read them. A table rebuild: SQLite cannot change a CHECK; no foreign key
-- points at this table, so it is rebuilt on PostgreSQL too. IPs count from the upgrade on: the
-- sealed addresses of earlier orders cannot be hashed in SQL. The kinds are an OR, not an IN list
-- (SQLite builds a temporary index for an IN list of three values on every row written).
CREATE TABLE risk_player_marks_new (
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind = 'device' OR kind = 'ip_country' OR kind = 'ip'),
    mark TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    first_seen_ms INTEGER,
    PRIMARY KEY (merchant_id, player_id, kind, mark)
) STRICT, WITHOUT ROWID;
INSERT INTO risk_player_marks_new (merchant_id, player_id, kind, mark, last_seen_ms, first_seen_ms)
    SELECT merchant_id, player_id, kind, mark, last_seen_ms, first_seen_ms FROM risk_player_marks;
DROP TABLE risk_player_marks;
ALTER TABLE risk_player_marks_new RENAME TO risk_player_marks;
CREATE INDEX risk_player_marks_seen ON risk_player_marks (last_seen_ms);
-- The order's values at its creation, which the callback's decision reads (as device_age_s).
ALTER TABLE risk_order_facts ADD COLUMN ip_age_s INTEGER CHECK (ip_age_s >= 0);
ALTER TABLE risk_order_facts ADD COLUMN player_devices_seen INTEGER CHECK (player_devices_seen >= 0);
ALTER TABLE risk_order_facts ADD COLUMN player_ips_seen INTEGER CHECK (player_ips_seen >= 0);

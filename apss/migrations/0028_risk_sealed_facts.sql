-- IPs and device ids at rest. risk_order_facts seals them (AES-GCM under a key id, the privacy
-- keys of crypto.PersonalData, `risk_order_facts.<column>:<order id>` as associated data) in
-- ip_sealed and device_id_sealed. The clear columns ip and device_id stay only for the rows
-- written before this migration: the privacy rotation job seals them on its first pass after the
-- upgrade and empties them (store/privacy.py SEALED_COLUMNS `legacy`); erasure and the retention
-- job clear both until then.
ALTER TABLE risk_order_facts ADD COLUMN ip_sealed TEXT;
ALTER TABLE risk_order_facts ADD COLUMN device_id_sealed TEXT;
-- Whether the order's device and its IP country were new for the player when it was created
-- (attributes new_device and new_ip_country): the callback's decision reads them. NULL: unknown.
ALTER TABLE risk_order_facts ADD COLUMN new_device INTEGER CHECK (new_device IN (0, 1));
ALTER TABLE risk_order_facts ADD COLUMN new_ip_country INTEGER CHECK (new_ip_country IN (0, 1));

-- Decisions no longer copy the order's IP and device id into their attributes: the decision's view
-- shows them from the order's sealed facts (so sealing, erasure and retention hold for one copy).
-- Earlier decisions lose theirs here (the same values are in risk_order_facts).
UPDATE risk_decisions SET attributes = json_remove(attributes, '$.ip', '$.device_id')
 WHERE json_extract(attributes, '$.ip') IS NOT NULL OR json_extract(attributes, '$.device_id') IS NOT NULL;

-- The devices and IP countries each player was seen with, as keyed hashes (the risk engine's
-- hash key; never the device id itself): new_device and new_ip_country are one index seek each,
-- kept in the write path of order creation. last_seen_ms moves at most once a day; a mark not seen
-- for privacy.retention_days is deleted by the retention job, and an erased player's marks go.
CREATE TABLE risk_player_marks (
    merchant_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('device', 'ip_country')),
    mark TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, player_id, kind, mark)
) STRICT, WITHOUT ROWID;
CREATE INDEX risk_player_marks_seen ON risk_player_marks (last_seen_ms);

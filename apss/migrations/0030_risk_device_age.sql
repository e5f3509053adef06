-- When each player's device (and IP country) mark was first seen: the risk attribute and fraud
-- model feature device_age_s (seconds since the player's first order on the order's device) is
-- now minus it. Marks made before this migration take the player's first order (risk_players),
-- which no mark can predate: their devices count as old as the account, never as new ones.
ALTER TABLE risk_player_marks ADD COLUMN first_seen_ms INTEGER;
UPDATE risk_player_marks SET first_seen_ms = coalesce(
    (SELECT CASE WHEN p.first_seen_ms < risk_player_marks.last_seen_ms THEN p.first_seen_ms
                 ELSE risk_player_marks.last_seen_ms END
       FROM risk_players AS p
      WHERE p.merchant_id = risk_player_marks.merchant_id AND p.player_id = risk_player_marks.player_id),
    last_seen_ms);
-- The order's device_age_s at its creation, which the callback's decision reads (as new_device).
ALTER TABLE risk_order_facts ADD COLUMN device_age_s INTEGER CHECK (device_age_s >= 0);

"""Privacy rules on JSON copies of a player's records (webhook payloads, stored answers): which
strings name the player, and which keys of the player's own objects hold personal data."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PERSONAL_JSON_KEYS", "decode_blob", "scrub_json"]

# Keys of a player's own JSON objects that hold personal data: cleared on erasure.
# `channel_options` of an order holds the payer's WeChat openid (jsapi).
PERSONAL_JSON_KEYS: dict[str, Any] = {"metadata": {}, "email": None, "ip": None, "device_id": None,
                                      "channel_options": None}


def scrub_json(value: Any, player_id: str, pseudonym: str) -> tuple[Any, bool]:
    """(the value with every string equal to the id replaced, whether it named the player)."""
    if isinstance(value, str):
        return (pseudonym, True) if value == player_id else (value, False)
    if isinstance(value, list):
        found = False
        out = []
        for item in value:
            new, hit = scrub_json(item, player_id, pseudonym)
            out.append(new)
            found |= hit
        return out, found
    if isinstance(value, dict):
        own = value.get("player_id") == player_id
        found = own
        result: dict[str, Any] = {}
        for key, item in value.items():
            if own and key in PERSONAL_JSON_KEYS:
                result[key] = PERSONAL_JSON_KEYS[key]
                continue
            if own and isinstance(item, str) and player_id in item:
                result[key] = item.replace(player_id, pseudonym)  # e.g. a return_url naming the player
                continue
            new, hit = scrub_json(item, player_id, pseudonym)
            result[key] = new
            found |= hit
        return result, found
    return value, False



def decode_blob(value: Any) -> Any:
    """The JSON in a blob or text column (None when it is not JSON)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return None

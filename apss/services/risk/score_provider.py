"""The one place the rules get `risk_score` from: the fraud model (apss/domain/risk/score.py)
scored on the order's rule attributes.

Most model features are rule attributes under the same name (the velocity counters). The rest
are derived here from what the engine holds: `amount_usd` (the order converted to US cents),
`account_age_s`, `amount_usd_per_player_*` (the player's amounts in the merchant's currency,
scaled to US cents at the order's rate), `ip_country_mismatch`, `hour_of_day`. `new_device`,
`new_ip_country`, `device_age_s`, `ip_age_s`, `player_devices_seen` and `player_ips_seen` are rule
attributes too (the player's marks, services/risk/engine.py), as of the order's creation at both
stages.

The model learnt from what happened before each order. At the callback stage the counters already
hold this order (it was counted when it was created), so its own share is taken out first: one
order and its amount, and the player from the distinct-player counts when this was the player's
only order in the window.

The score is missing (None: `risk_score` comparisons do not match, `is_missing(risk_score)` does)
when the order's amount cannot be put in US cents (no rate: the model never saw that), and on a
player's first order when it names neither an IP nor a device. There nothing at all is known: no
counter, no mark, and in the synthetic worlds the model learnt from such an order is more often
the next new account of a velocity burst (told apart only by the IP it did not send) than a new
player's first purchase, so it would score a first 19.99 purchase 80-90 (checked), a judgement
about the world's mix, not about the order. Later orders of the player without IP or device are
scored on its own counters and marks: the model was trained on worlds where integrations leave
both out often (scripts/train_fraud_model.py SPARSE_VARIANTS), so they take learnt branches. Even
so, an integration that never sends IP or device should expect a new account's second purchase
within the hour above 20.00 to be challenged (scores 65-85).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apss.domain.risk.score import MODEL_FEATURES, score

__all__ = ["SCORE_ATTRIBUTES", "risk_score"]

# The rule attributes the engine must compute for the score, whatever the rules ask for.
SCORE_ATTRIBUTES = frozenset(
    {name for name in MODEL_FEATURES if "_per_" in name and not name.startswith(("amount_usd", "amount_to", "decline_share"))}
    | {f"amount_per_player_{w}" for w in ("1h", "1d", "7d")})


def _before_this_order(attrs: Mapping[str, Any]) -> dict[str, Any]:
    features: dict[str, Any] = {name: attrs.get(name) for name in SCORE_ATTRIBUTES}
    if attrs.get("stage") != "callback":
        return features
    own_amount = attrs.get("amount_merchant") or 0
    for name, value in features.items():
        if value is None:
            continue
        if name.startswith("orders_per_"):
            features[name] = max(0, value - 1)
        elif name.startswith("amount_per_"):
            features[name] = max(0, value - own_amount)
        elif name.startswith("players_per_") and attrs.get(f"orders_per_player_{name.rsplit('_', 1)[1]}") == 1:
            features[name] = max(0, value - 1)
    return features


def risk_score(attrs: Mapping[str, Any], *, amount_usd: int | None, account_age_s: int, now_ms: int,
               player_seen: bool) -> int | None:
    """`player_seen`: APSS saw an order of this player before this one."""
    if amount_usd is None or (not player_seen and not attrs.get("ip") and not attrs.get("device_id")):
        return None
    features = _before_this_order(attrs)
    features["amount_usd"] = amount_usd
    features["account_age_s"] = account_age_s
    merchant_amount = attrs.get("amount_merchant")
    for w in ("1h", "1d", "7d"):
        spent = features.pop(f"amount_per_player_{w}")
        features[f"amount_usd_per_player_{w}"] = (
            None if spent is None or amount_usd is None or not merchant_amount else spent * amount_usd // merchant_amount)
    ip_country, billing = attrs.get("ip_country"), attrs.get("billing_country")
    features["ip_country_mismatch"] = None if not ip_country or not billing else ip_country != billing
    for name in ("new_device", "new_ip_country", "device_age_s", "ip_age_s", "player_devices_seen", "player_ips_seen"):
        features[name] = attrs.get(name)
    features["hour_of_day"] = (now_ms // 3_600_000) % 24
    result = score(features)
    assert 0 <= result <= 100
    return result

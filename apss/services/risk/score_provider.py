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
when the order's amount cannot be put in US cents (no rate: the model never saw that) or the order
names neither an IP nor a device. Then only the player's own counters are known, and in the
synthetic worlds the model learnt from, such an order is more often the next new account of a
velocity burst (told apart only by the IP it did not send) than an ordinary purchase: it would
judge the worlds' mix, not the order (checked: a new player's first 19.99 purchase without either
scores 80-90, a new account's 400.00 and 600.00 purchases minutes apart are blocked at 90+, with
IP and device a first 19.99 scores about 40). Scoring them caught a few more fraudulent orders
offline (bench: --world train worlds); it would challenge or block ordinary players of an
integration that sends neither field, so they stay unscored. The model does train on worlds
where integrations leave one field or both out often (scripts/train_fraud_model.py
SPARSE_VARIANTS), so an order with one of the two takes learnt branches for the other.
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


def risk_score(attrs: Mapping[str, Any], *, amount_usd: int | None, account_age_s: int, now_ms: int) -> int | None:
    if amount_usd is None or (not attrs.get("ip") and not attrs.get("device_id")):
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

"""The fraud score's pure evaluator against the training library's own answers, without it.

scripts/train_fraud_model.py writes fraud_model_cases.json beside the model: features of held-out
orders (some with fields dropped, some moved onto a split's threshold, just below it, or to the
float32 midpoint between), with XGBoost's margin and the leaf it reached in every tree. Here the
evaluator must reach the same leaves and the same margin; XGBoost is not needed (nor imported)."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apss.domain.risk import score as fraud_score

ROOT = Path(__file__).resolve().parents[1]
RISK = ROOT / "apss" / "domain" / "risk"
CASES = json.loads((RISK / "fraud_model_cases.json").read_text())["cases"]

# A card tester: a day-old account on one device, a burst of small payments over many cards,
# most of them declined, at 3 in the morning.
CARD_TESTING = {
    "amount_usd": 150, "account_age_s": 900, "orders_per_player_1h": 24, "orders_per_player_1d": 24,
    "orders_per_player_7d": 24, "amount_usd_per_player_1h": 3600, "amount_usd_per_player_1d": 3600,
    "amount_usd_per_player_7d": 3600, "declines_per_player_1h": 19, "declines_per_player_1d": 19,
    "orders_per_ip_1h": 24, "orders_per_ip_1d": 24, "declines_per_ip_1d": 19, "orders_per_device_1h": 24,
    "orders_per_device_1d": 24, "declines_per_device_1d": 19, "players_per_ip_1d": 2, "players_per_device_1d": 2,
    "cards_per_player_7d": 22, "ip_country_mismatch": True, "new_device": False, "new_ip_country": False,
    "hour_of_day": 3,
}
# A regular player of half a year buying a 9.99 pack in the evening, as every few days.
REGULAR = {
    "amount_usd": 999, "account_age_s": 180 * 86400, "orders_per_player_1h": 0, "orders_per_player_1d": 1,
    "orders_per_player_7d": 4, "amount_usd_per_player_1h": 0, "amount_usd_per_player_1d": 499,
    "amount_usd_per_player_7d": 3500, "declines_per_player_1h": 0, "declines_per_player_1d": 0,
    "orders_per_ip_1h": 0, "orders_per_ip_1d": 1, "declines_per_ip_1d": 0, "orders_per_device_1h": 0,
    "orders_per_device_1d": 1, "declines_per_device_1d": 0, "players_per_ip_1d": 1, "players_per_device_1d": 1,
    "cards_per_player_7d": 1, "ip_country_mismatch": False, "new_device": False, "new_ip_country": False,
    "hour_of_day": 19,
}


def _f32(value: float) -> float:
    return array("f", (value,))[0]  # another way to float32 than the evaluator's struct


def test_the_fixture_covers_missing_values_and_thresholds():
    assert len(CASES) >= 150
    assert sum(any(v is None for v in c["features"].values()) for c in CASES) >= 20
    assert sum(len(c["features"]) < len(fraud_score.FEATURES) for c in CASES) >= 20
    assert sum(any(isinstance(v, float) and v != int(v) for v in c["features"].values()) for c in CASES) >= 20


def test_the_evaluator_reaches_xgboosts_leaves_and_margins():
    model = fraud_score.default_model()
    for case in CASES:
        row = fraud_score.model_row(case["features"])
        assert model.leaves_of_row(row) == case["leaves"], case["features"]
        # within 1e-6, relative beyond |margin| 1: XGBoost groups its float32 additions otherwise
        # (scripts/train_fraud_model.py MARGIN_TOLERANCE); the leaves are the same, always
        assert model.margin(case["features"]) == pytest.approx(case["margin"], abs=1e-6, rel=1e-6), case["features"]


def test_the_margin_is_the_float32_sum_of_the_leaves_reached():
    model = fraud_score.default_model()
    for case in CASES[:50]:
        total = _f32(model.base_margin)
        for nodes, leaf in zip(model.trees, case["leaves"]):
            assert nodes[leaf][0] == -1
            total = _f32(total + nodes[leaf][1])
        assert total == model.margin(case["features"])
        # XGBoost groups the same float32 additions otherwise: a step or two apart at most
        assert total == pytest.approx(case["margin"], abs=1e-6, rel=1e-6)


def test_the_score_is_the_scaled_sigmoid_of_the_margin():
    for case in CASES[:50]:
        probability = 1 / (1 + math.exp(-case["margin"]))
        assert abs(fraud_score.score(case["features"]) - 100 * probability) <= 0.5 + 1e-9
    assert fraud_score.score_of_margin(1e9) == 100 and fraud_score.score_of_margin(-1e9) == 0
    assert fraud_score.score_of_margin(0.0) == 50


def test_a_card_testing_burst_scores_high_and_a_regular_purchase_low():
    assert fraud_score.score(CARD_TESTING) > 65
    assert fraud_score.score(REGULAR) < 20
    # a new player's first purchase, a starter pack on the phone they play on: new, but not a burst
    first_purchase = {k: 0 for k in REGULAR} | {"amount_usd": 499, "new_device": True, "hour_of_day": 20}
    assert fraud_score.score(first_purchase) < 20
    # the same account, an hour and two dozen mostly declined small payments over new cards later
    burst = first_purchase | {k: CARD_TESTING[k] for k in CARD_TESTING if "_per_" in k or k == "account_age_s"}
    assert fraud_score.score(burst) > 65


def test_missing_features_take_the_default_direction():
    assert 0 <= fraud_score.score({}) <= 100
    without_device = {k: v for k, v in CARD_TESTING.items() if "device" not in k}
    as_none = without_device | {k: None for k in CARD_TESTING if "device" in k}
    as_nan = without_device | {k: math.nan for k in CARD_TESTING if "device" in k}
    margins = {fraud_score.margin(d) for d in (without_device, as_none, as_nan)}
    assert len(margins) == 1
    assert fraud_score.score(without_device) > 65  # the player's and the IP's counters still tell
    # attributes the model does not read (the rules engine passes its whole dict) change nothing
    assert fraud_score.margin(REGULAR | {"ip": "203.0.113.9", "currency": "EUR"}) == fraud_score.margin(REGULAR)


def test_a_value_of_the_wrong_type_is_a_programmer_error():
    with pytest.raises(AssertionError):
        fraud_score.score(REGULAR | {"amount_usd": "999"})


def test_the_model_is_small_and_names_the_features_it_was_trained_on():
    document = json.loads((RISK / "fraud_model.json").read_text())
    assert (RISK / "fraud_model.json").stat().st_size < 300_000
    assert tuple(document["features"]) == fraud_score.MODEL_FEATURES
    assert len({f.name for f in fraud_score.FEATURES + fraud_score.DERIVED_FEATURES}) == len(fraud_score.MODEL_FEATURES)
    with pytest.raises(AssertionError):
        fraud_score.FraudModel(document | {"features": document["features"][::-1]})


def test_the_model_loads_without_the_training_libraries():
    code = ("import sys\n"
            "for name in ('xgboost', 'lightgbm', 'numpy', 'scipy', 'sklearn'): sys.modules[name] = None\n"
            "from apss.domain.risk import score\n"
            f"print(score.score({REGULAR!r}), score.score({CARD_TESTING!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    regular, card_testing = map(int, done.stdout.split())
    assert regular == fraud_score.score(REGULAR) and card_testing == fraud_score.score(CARD_TESTING)


_float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(threshold=_float32s, x=st.floats(allow_nan=False, allow_infinity=False), near=st.booleans())
def test_the_cut_sends_left_exactly_what_float32_sends_left(threshold, x, near):
    cut = fraud_score._cut_of(threshold)
    if near:  # the interesting values sit within a float32 step of the threshold
        x = threshold + (x % 1.0) * (abs(threshold) * 2**-23 + 1e-45) * (1 if x >= 0 else -1)
    try:
        as_float32 = struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:  # beyond float32's range: XGBoost would see inf
        as_float32 = math.copysign(math.inf, x)
    assert (x < cut) == (as_float32 < threshold), (threshold, x, cut)


def test_the_training_worlds_addresses_are_where_the_shipped_table_says():
    """scripts/fraud_data.py gives every country's addresses a block the registries allocated to
    that country, whole: each of its /24s resolves to the country in the engine's table, and an
    order has an ip_country exactly when it has an IP, as the engine would find."""
    import ipaddress

    from apss.domain.risk.ip_country import country_of

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fraud_data
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert set(fraud_data.ADDRESS_BLOCKS) == set(fraud_data.COUNTRIES)
    for country, block in fraud_data.ADDRESS_BLOCKS.items():
        network = ipaddress.ip_network(block)
        seen = {country_of(str(network.network_address + offset)) for offset in range(0, network.num_addresses, 256)}
        assert seen | {country_of(str(network.broadcast_address))} == {country}, block
    orders = fraud_data.generate(dataclasses.replace(fraud_data.TRAIN, days=2, players=200))
    assert all((o.ip is None) == (o.ip_country is None) for _, o in orders)
    assert {o.ip_country for _, o in orders} == {None, *fraud_data.COUNTRIES}

"""The fraud score: a gradient-boosted tree model evaluated in pure Python.

`scripts/train_fraud_model.py` trains the trees with XGBoost on a generated, labelled data set and
exports them to `fraud_model.json` beside this module; here they are walked with no training
library installed. `score(features)` maps the order's features to `risk_score`, 0-100: the
sigmoid of the summed margin, times 100, rounded.

The features are listed once, in `FEATURES` (name, type, meaning); the rules engine passes its
attribute dict and every name here that it holds is used, anything else in the dict is ignored.
A feature that is absent, None or NaN is missing and takes the side the tree learnt for missing
values (XGBoost's default direction), so an order without a device id or an IP still scores.

XGBoost stores thresholds and feature values as float32 and sends a value left when
`float32(x) < threshold`. Loading turns each float32 threshold into the float64 cut that sends
exactly the same values left, so walking a tree is one float comparison per node and the leaves
reached are the training library's own; the margin is summed in float32, tree after tree, so it
equals XGBoost's within 1e-6, relative beyond |margin| 1 (XGBoost groups the same float32
additions otherwise: a step or two apart; tests/test_fraud_score.py checks the leaves, exactly,
and the margins against a fixture the training run writes).
"""

from __future__ import annotations

import json
import math
import struct
from array import array
from functools import cache
from importlib.resources import files
from typing import Literal, Mapping

import msgspec

__all__ = [
    "DERIVED_FEATURES",
    "FEATURES",
    "MODEL_FEATURES",
    "MODEL_FORMAT",
    "Feature",
    "FraudModel",
    "default_model",
    "margin",
    "model_row",
    "score",
    "score_of_margin",
]

MODEL_FORMAT = "apss-fraud-trees/1"
_MODEL_FILE = "fraud_model.json"
_TREES_MAX = 2_000  # a model larger than this is not the small shipped one: refuse it
_NODES_PER_TREE_MAX = 2**12
_MARGIN_ABS_MAX = 700.0  # math.exp overflows past ~709


class Feature(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: Literal["int", "bool"]
    meaning: str


# Counters are the rules engine's sliding windows: 1h, 1d and 7d before this order (the order
# itself not counted). "declines" are declined or failed payments. Amounts are US cents.
FEATURES: tuple[Feature, ...] = (
    Feature(name="amount_usd", type="int", meaning="the order's amount in US cents, converted at the order's rate"),
    Feature(name="account_age_s", type="int", meaning="seconds since the player's first order seen by this merchant (0 on the first)"),
    Feature(name="orders_per_player_1h", type="int", meaning="orders by this player in the last hour"),
    Feature(name="orders_per_player_1d", type="int", meaning="orders by this player in the last day"),
    Feature(name="orders_per_player_7d", type="int", meaning="orders by this player in the last 7 days"),
    Feature(name="amount_usd_per_player_1h", type="int", meaning="amount of this player's orders in the last hour, US cents"),
    Feature(name="amount_usd_per_player_1d", type="int", meaning="amount of this player's orders in the last day, US cents"),
    Feature(name="amount_usd_per_player_7d", type="int", meaning="amount of this player's orders in the last 7 days, US cents"),
    Feature(name="declines_per_player_1h", type="int", meaning="this player's declined or failed payments in the last hour"),
    Feature(name="declines_per_player_1d", type="int", meaning="this player's declined or failed payments in the last day"),
    Feature(name="orders_per_ip_1h", type="int", meaning="orders from this IP address in the last hour"),
    Feature(name="orders_per_ip_1d", type="int", meaning="orders from this IP address in the last day"),
    Feature(name="declines_per_ip_1d", type="int", meaning="declined or failed payments from this IP in the last day"),
    Feature(name="orders_per_device_1h", type="int", meaning="orders from this device in the last hour"),
    Feature(name="orders_per_device_1d", type="int", meaning="orders from this device in the last day"),
    Feature(name="declines_per_device_1d", type="int", meaning="declined or failed payments from this device in the last day"),
    Feature(name="players_per_ip_1d", type="int", meaning="distinct players seen on this IP in the last day"),
    Feature(name="players_per_device_1d", type="int", meaning="distinct players seen on this device in the last day"),
    Feature(name="cards_per_player_7d", type="int", meaning="distinct card fingerprints this player used in the last 7 days"),
    Feature(name="ip_country_mismatch", type="bool", meaning="ip_country != billing_country (missing when either is unknown)"),
    Feature(name="new_device", type="bool", meaning="this device was never seen for this player before"),
    Feature(name="new_ip_country", type="bool", meaning="this IP country was never seen for this player before"),
    Feature(name="device_age_s", type="int",
            meaning="seconds since this player's first order on this device (0 on a new device; missing without one)"),
    Feature(name="ip_age_s", type="int",
            meaning="seconds since this player's first order from this IP (0 on an IP new to the player; missing without one)"),
    Feature(name="player_devices_seen", type="int", meaning="distinct devices seen for this player before this order"),
    Feature(name="player_ips_seen", type="int", meaning="distinct IP addresses seen for this player before this order"),
    Feature(name="hour_of_day", type="int", meaning="the hour of the order, 0-23, UTC"),
)
# Ratios a tree cannot form from its inputs, computed here so training and scoring agree.
DERIVED_FEATURES: tuple[Feature, ...] = (
    Feature(name="amount_to_player_mean_7d", type="int",
            meaning="amount_usd / the player's mean order amount over 7 days, in percent (missing without history)"),
    Feature(name="decline_share_player_1d", type="int",
            meaning="declines_per_player_1d / orders_per_player_1d, in percent (missing without orders)"),
)
MODEL_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES + DERIVED_FEATURES)
_INPUT_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

Row = list[float | None]
# One node: (feature index or -1 for a leaf, cut or leaf value, yes, no, missing) - yes when x < cut.
_Node = tuple[int, float, int, int, int]


def _value(raw: object, name: str) -> float | None:
    if raw is None:
        return None
    assert isinstance(raw, int | float), (name, type(raw).__name__)  # bool is an int: True -> 1.0
    value = float(raw)
    return None if math.isnan(value) else value


def model_row(features: Mapping[str, object]) -> Row:
    """The model's input vector, in MODEL_FEATURES order: inputs then derived; None = missing."""
    row = [_value(features.get(name), name) for name in _INPUT_NAMES]
    get = dict(zip(_INPUT_NAMES, row)).get
    amount, orders_7d, amount_7d = get("amount_usd"), get("orders_per_player_7d"), get("amount_usd_per_player_7d")
    mean_7d = amount_7d / orders_7d if orders_7d and amount_7d else None
    row.append(100.0 * amount / mean_7d if amount is not None and mean_7d else None)
    orders_1d, declines_1d = get("orders_per_player_1d"), get("declines_per_player_1d")
    row.append(100.0 * declines_1d / orders_1d if orders_1d and declines_1d is not None else None)
    assert len(row) == len(MODEL_FEATURES), len(row)
    return row


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _float32_below(value: float) -> float:
    """The largest float32 below a finite float32 (by its bit pattern, as nextafter in float32)."""
    if value == 0.0:
        return -struct.unpack("<f", struct.pack("<I", 1))[0]  # the negative subnormal nearest zero
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    bits = bits - 1 if value > 0 else bits + 1  # sign-magnitude: away from zero for negatives
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _cut_of(threshold: float) -> float:
    """The float64 c with `x < c` exactly when `float32(x) < threshold`, for a float32 threshold.

    float32 rounding is monotone, so the values sent left are all those below the midpoint m
    between the threshold and the float32 below it, and m itself when it rounds down (ties go to
    the even neighbour)."""
    assert _float32(threshold) == threshold, threshold
    if math.isinf(threshold):
        return threshold
    below = _float32_below(threshold)
    assert below < threshold, (below, threshold)
    if math.isinf(below):  # threshold -FLT_MAX: left is what rounds to -inf, from the halfway point on (a tie rounds to it)
        return math.nextafter(-(2.0**128 - 2.0**103), math.inf)
    midpoint = (below + threshold) / 2  # exact: a float32 pair's midpoint needs 25 bits
    return math.nextafter(midpoint, math.inf) if _float32(midpoint) == below else midpoint


def score_of_margin(value: float) -> int:
    """risk_score 0-100: 100 times the sigmoid of the margin, rounded half up."""
    clamped = max(-_MARGIN_ABS_MAX, min(_MARGIN_ABS_MAX, value))
    result = int(100.0 / (1.0 + math.exp(-clamped)) + 0.5)
    assert 0 <= result <= 100, (value, result)
    return result


class FraudModel:
    """Trees loaded once from the exported JSON; `margin` and `score` are pure and thread-safe."""

    __slots__ = ("base_margin", "feature_names", "threshold", "trees")

    def __init__(self, document: Mapping[str, object]) -> None:
        assert document.get("format") == MODEL_FORMAT, document.get("format")
        assert tuple(document["features"]) == MODEL_FEATURES, "the model was trained on other features: retrain it"
        trees = document["trees"]
        assert isinstance(trees, list) and 0 < len(trees) <= _TREES_MAX, len(trees)
        self.feature_names = MODEL_FEATURES
        self.base_margin = _float32(float(document["base_margin"]))
        self.threshold = int(document.get("threshold", 65))  # the score the training run reported at
        self.trees: tuple[tuple[_Node, ...], ...] = tuple(self._nodes_of(tree) for tree in trees)

    @staticmethod
    def _nodes_of(tree: Mapping[str, list]) -> tuple[_Node, ...]:
        feature, value, left, right, default_left = (tree[k] for k in ("feature", "value", "left", "right", "default_left"))
        count = len(feature)
        assert 0 < count <= _NODES_PER_TREE_MAX and all(len(c) == count for c in (value, left, right, default_left))
        nodes: list[_Node] = []
        for i in range(count):
            if left[i] < 0:  # a leaf: its value is the margin it adds
                nodes.append((-1, _float32(float(value[i])), -1, -1, -1))
                continue
            assert 0 <= feature[i] < len(MODEL_FEATURES) and i < left[i] < count and i < right[i] < count, (i, tree)
            missing = left[i] if default_left[i] else right[i]
            nodes.append((int(feature[i]), _cut_of(_float32(float(value[i]))), int(left[i]), int(right[i]), int(missing)))
        return tuple(nodes)

    def margin_of_row(self, row: Row) -> float:
        assert len(row) == len(MODEL_FEATURES), len(row)
        total = array("f", (self.base_margin,))  # XGBoost sums in float32: storing here rounds the same way
        for nodes in self.trees:
            feature, cut, yes, no, missing = nodes[0]
            while feature >= 0:  # children come after their parent, so every walk ends at a leaf
                x = row[feature]
                feature, cut, yes, no, missing = nodes[missing if x is None else yes if x < cut else no]
            total[0] += cut
        return total[0]

    def leaves_of_row(self, row: Row) -> list[int]:
        """The node index of the leaf reached in each tree (XGBoost's `pred_leaf`), for checks."""
        reached = []
        for nodes in self.trees:
            i = 0
            while nodes[i][0] >= 0:
                feature, cut, yes, no, missing = nodes[i]
                x = row[feature]
                i = missing if x is None else yes if x < cut else no
            reached.append(i)
        return reached

    def margin(self, features: Mapping[str, object]) -> float:
        return self.margin_of_row(model_row(features))

    def score(self, features: Mapping[str, object]) -> int:
        return score_of_margin(self.margin_of_row(model_row(features)))


@cache
def default_model() -> FraudModel:
    """The model shipped in the package, read and prepared on first use, then kept."""
    return FraudModel(json.loads(files(__package__).joinpath(_MODEL_FILE).read_text(encoding="utf-8")))


def margin(features: Mapping[str, object]) -> float:
    return default_model().margin(features)


def score(features: Mapping[str, object]) -> int:
    """risk_score 0-100 of an order's features (see FEATURES); missing features are allowed."""
    return default_model().score(features)

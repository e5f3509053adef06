"""Train the fraud score model and export it to apss/domain/risk/fraud_model.json.

    pip install -e '.[train]' && python3 scripts/train_fraud_model.py

Generates a labelled synthetic stream of orders (scripts/fraud_data.py: TRAIN), trains
gradient-boosted trees with XGBoost on the features of apss/domain/risk/score.py, exports the
trees to a small JSON file that the pure-Python evaluator reads, and checks the export against
XGBoost's own margins. Then it scores a held-out stream generated with other parameters
(HELD_OUT: other rates, burst sizes, timing and mixes) with the shipped evaluator and prints AUC,
precision and recall at the threshold. It also writes fraud_model_cases.json beside the model:
(features, XGBoost's margin, leaves reached) pairs that tests/test_fraud_score.py checks the
evaluator against without XGBoost installed. Seeded: the same run gives the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import fraud_data  # noqa: E402

from apss.domain.risk import score as fraud_score  # noqa: E402

MODEL_PATH = ROOT / "apss" / "domain" / "risk" / "fraud_model.json"
CASES_PATH = ROOT / "apss" / "domain" / "risk" / "fraud_model_cases.json"
THRESHOLD = 65  # the score the default rule set acts on (require_3ds / review if risk_score >= 65)
CASES_SAMPLED = 100
# The evaluator sums the leaves in float32 one tree after another; XGBoost groups its additions
# otherwise, so the two sums can differ by a float32 step or two (2.4e-7 at a margin of 1, 1e-6
# at 8, where scores are 0 or 100 already): margins must agree within 1e-6 (relative beyond 1).
# The leaves reached must be the same, always.
MARGIN_TOLERANCE = 1e-6
XGB_PARAMS = {
    "objective": "binary:logistic", "eval_metric": "auc", "tree_method": "hist", "max_depth": 4, "eta": 0.2,
    "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 2, "lambda": 1.0, "seed": 7, "nthread": 2,
}
ROUNDS = 90
# TRAIN's world and this many others around it (fraud_data.jittered: every rate, size and timing
# moved by up to 1.5x), so that the trees learn the attacks' patterns, not one world's cut-offs.
VARIANTS = 4
# And this many more whose integrations send fewer optional fields (IP missing on 30% of orders,
# device on 35%, each then jittered): orders naming neither IP nor device are scored too, and the
# trees must have seen enough of them to give them a judgement rather than a default direction.
SPARSE_VARIANTS = 2


def matrix(rows: list[tuple[dict, fraud_data.Order]]):
    import numpy as np

    x = np.array([[math.nan if v is None else v for v in fraud_score.model_row(f)] for f, _ in rows], dtype=np.float64)
    y = np.array([o.fraud for _, o in rows], dtype=np.float64)
    return x, y


def _short(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (the evaluator rounds to float32)."""
    import numpy as np

    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def export(booster) -> dict:
    raw = json.loads(booster.save_raw(raw_format="json"))
    learner = raw["learner"]
    assert learner["objective"]["name"] == "binary:logistic", learner["objective"]
    base_score = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
    trees = []
    for tree in learner["gradient_booster"]["model"]["trees"]:
        assert all(t == 0 for t in tree.get("split_type", [])), "numerical splits only"
        left, right = tree["left_children"], tree["right_children"]
        trees.append({
            "feature": [int(f) if left[i] >= 0 else -1 for i, f in enumerate(tree["split_indices"])],
            "value": [_short(v) for v in tree["split_conditions"]],
            "left": left, "right": right, "default_left": [int(bool(d)) for d in tree["default_left"]],
        })
    return {"format": fraud_score.MODEL_FORMAT, "features": list(fraud_score.MODEL_FEATURES),
            "base_margin": _short(math.log(base_score / (1 - base_score))), "threshold": THRESHOLD, "trees": trees,
            "trained": {"library": "xgboost", "params": XGB_PARAMS, "rounds": ROUNDS, "seed": fraud_data.TRAIN.seed}}


def auc(labels: list[bool], scores: list[float]) -> float:
    """Area under the ROC curve: the chance a random fraud scores above a random legit order (ties half)."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum, i, positives = 0.0, 0, sum(labels)
    while i < len(order):
        j = i
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            j += 1
        mean_rank = (i + j + 1) / 2  # ranks i+1 .. j
        rank_sum += mean_rank * sum(labels[order[k]] for k in range(i, j))
        i = j
    negatives = len(labels) - positives
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def report(name: str, rows, model: fraud_score.FraudModel) -> dict:
    margins = [model.margin(f) for f, _ in rows]
    scores = [fraud_score.score_of_margin(m) for m in margins]
    labels = [o.fraud for _, o in rows]
    flagged = [s >= THRESHOLD for s in scores]
    tp = sum(f and y for f, y in zip(flagged, labels))
    precision = tp / max(1, sum(flagged))
    recall = tp / max(1, sum(labels))
    legit_flagged = sum(f and not y for f, y in zip(flagged, labels)) / max(1, labels.count(False))
    figures = {"orders": len(rows), "fraud": sum(labels), "auc": auc(labels, margins), "precision": precision,
               "recall": recall, "legit_flagged": legit_flagged}
    print(f"{name}: {len(rows)} orders, {sum(labels)} fraudulent; AUC {figures['auc']:.4f}; at risk_score >= {THRESHOLD}: "
          f"precision {precision:.3f}, recall {recall:.3f}, legitimate orders flagged {100 * legit_flagged:.2f}%")
    by_kind: dict[str, list[int]] = {}
    for flag, (_, o) in zip(flagged, rows):
        by_kind.setdefault(o.kind, [0, 0])[0] += flag
        by_kind[o.kind][1] += 1
    print("  flagged by kind: " + ", ".join(f"{k} {n}/{total}" for k, (n, total) in sorted(by_kind.items())))
    return figures


def check_export(booster, model: fraud_score.FraudModel, x, rows) -> float:
    """The pure evaluator against XGBoost on every row: the same leaves, margins within MARGIN_TOLERANCE."""
    import xgboost as xgb

    dm = xgb.DMatrix(x, missing=math.nan)
    expected = booster.predict(dm, output_margin=True)
    worst = max(abs(model.margin(f) - float(m)) / max(1.0, abs(float(m))) for (f, _), m in zip(rows, expected))
    assert worst < MARGIN_TOLERANCE, worst
    return worst


def _boundary_cases(model: fraud_score.FraudModel, rows, rng: random.Random) -> list[dict]:
    """Held-out orders with one feature moved onto a split's threshold, just below it, or missing:
    the places where a float32 slip or a wrong default direction would show."""
    import numpy as np

    cases = []
    names = fraud_score.FEATURES
    for _ in range(CASES_SAMPLED):
        features = dict(rng.choice(rows)[0])
        tree = rng.choice(model.trees)
        splits = [n for n in tree if n[0] >= 0 and n[0] < len(names)]
        if not splits:
            continue
        feature, cut = rng.choice(splits)[:2]
        threshold = float(np.float32(cut))  # the float32 the cut stands for (cut is within half a float32 step)
        below = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        features[names[feature].name] = rng.choice((threshold, below, (threshold + below) / 2, None))
        cases.append(features)
    return cases


def fixture(booster, model: fraud_score.FraudModel, rows, rng: random.Random) -> dict:
    import numpy as np
    import xgboost as xgb

    inputs = [f.name for f in fraud_score.FEATURES]
    rows = [({k: f[k] for k in inputs if k in f}, o) for f, o in rows]  # the counters the model does not read, left out
    sampled = [dict(f) for f, _ in rng.sample(rows, CASES_SAMPLED)]
    for features in sampled[: CASES_SAMPLED // 4]:  # some with optional fields dropped, as integrations do
        for name in rng.sample(sorted(features), 4):
            del features[name]
    cases = sampled + _boundary_cases(model, rows, rng)
    x = np.array([[math.nan if v is None else v for v in fraud_score.model_row(f)] for f in cases], dtype=np.float64)
    dm = xgb.DMatrix(x, missing=math.nan)
    margins = booster.predict(dm, output_margin=True)
    leaves = booster.predict(dm, pred_leaf=True)
    return {"about": "XGBoost's own margins and leaf indices for these features; tests/test_fraud_score.py "
                     "checks the pure evaluator against them. Written by scripts/train_fraud_model.py.",
            "cases": [{"features": f, "margin": float(m), "leaves": [int(v) for v in leaf]}
                      for f, m, leaf in zip(cases, margins, leaves)]}


def training_worlds(variants: int, sparse: int = SPARSE_VARIANTS) -> list[fraud_data.Params]:
    train = fraud_data.TRAIN
    sparse_train = dataclasses.replace(train, missing_ip_p=0.3, missing_device_p=0.35)
    return [train, *(fraud_data.jittered(train, seed=100 * train.seed + i) for i in range(1, variants + 1)),
            *(fraud_data.jittered(sparse_train, seed=100 * train.seed + 100 + i) for i in range(1, sparse + 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="train and report, leave the shipped files alone")
    parser.add_argument("--variants", type=int, default=VARIANTS, help="worlds around TRAIN's trained on besides it")
    parser.add_argument("--sparse-variants", type=int, default=SPARSE_VARIANTS,
                        help="worlds with fewer optional fields (IP, device) trained on besides")
    args = parser.parse_args()
    import xgboost as xgb

    train_rows = [row for params in training_worlds(args.variants, args.sparse_variants) for row in fraud_data.generate(params)]
    held_out_rows = fraud_data.generate(fraud_data.HELD_OUT)
    print("training set:", dict(Counter(o.kind for _, o in train_rows)))
    print("held-out set:", dict(Counter(o.kind for _, o in held_out_rows)))
    x, y = matrix(train_rows)
    booster = xgb.train(XGB_PARAMS, xgb.DMatrix(x, label=y, missing=math.nan, feature_names=list(fraud_score.MODEL_FEATURES)),
                        num_boost_round=ROUNDS)
    booster.feature_names = None  # the export and the checks address features by position
    document = export(booster)
    model = fraud_score.FraudModel(document)
    print(f"evaluator vs xgboost on the held-out set: max |margin difference| "
          f"{check_export(booster, model, matrix(held_out_rows)[0], held_out_rows):.2e}")
    report("training set (fit)", train_rows, model)
    figures = report("held-out set (other parameters)", held_out_rows, model)
    text = json.dumps(document, separators=(",", ":"))
    print(f"model: {len(document['trees'])} trees, {sum(len(t['left']) for t in document['trees'])} nodes, {len(text) / 1024:.0f} KiB")
    if not args.no_write:
        document["held_out"] = {k: round(v, 4) for k, v in figures.items()}
        MODEL_PATH.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
        cases = fixture(booster, model, held_out_rows, random.Random(5))
        CASES_PATH.write_text(json.dumps(cases, separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"wrote {MODEL_PATH.relative_to(ROOT)} and {CASES_PATH.relative_to(ROOT)} ({len(cases['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

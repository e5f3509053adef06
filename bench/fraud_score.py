"""The fraud score evaluator's cost per order: p50/p99 of `score(features)` on held-out orders,
beside a baseline measured in the same run (a dict copy of the same features, the least any
scorer does). Pure Python, no training library needed:

    python3 bench/fraud_score.py [--orders 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import fraud_data  # noqa: E402

from apss.domain.risk import score as fraud_score  # noqa: E402


def timings_ns(fn, samples: list[dict], rounds: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(rounds):
        for features in samples:
            start = clock()
            fn(features)
            out.append(clock() - start)
    return out


def describe(name: str, ns: list[int]) -> str:
    q = statistics.quantiles(ns, n=100)
    return f"{name:<28} p50 {q[49] / 1000:7.2f} us   p99 {q[98] / 1000:7.2f} us   mean {statistics.fmean(ns) / 1000:7.2f} us"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    inputs = [f.name for f in fraud_score.FEATURES]
    rows = fraud_data.generate(fraud_data.HELD_OUT)[: args.orders]
    samples = [{k: f[k] for k in inputs if k in f} for f, _ in rows]
    start = time.perf_counter()
    model = fraud_score.default_model()
    print(f"model loaded in {1000 * (time.perf_counter() - start):.1f} ms: {len(model.trees)} trees; "
          f"{len(samples)} held-out orders x {args.rounds} rounds")
    fraud_score.score(samples[0])  # warm
    print(describe("baseline: dict(features)", timings_ns(dict, samples, args.rounds)))
    print(describe("score(features)", timings_ns(fraud_score.score, samples, args.rounds)))
    rows_ready = [fraud_score.model_row(f) for f in samples]
    print(describe("  of which trees only", timings_ns(model.margin_of_row, rows_ready, args.rounds)))


if __name__ == "__main__":
    main()

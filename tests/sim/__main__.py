"""`python -m tests.sim --seeds N [--start S] [--steps K]`: run seeds S..S+N-1, print each seed's
kills, operations, faults and violations, and the totals; exit 1 if any seed found a violation."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.sim.world import run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--verbose", action="store_true", help="print each seed's operation and fault counts")
    args = parser.parse_args(argv)
    operations: Counter = Counter()
    faults: Counter = Counter()
    charged: Counter = Counter()
    refunded: Counter = Counter()
    kills = group = recovery = 0
    failed: list[int] = []
    with tempfile.TemporaryDirectory(prefix="apss-sim-") as tmp:
        for seed in range(args.start, args.start + args.seeds):
            result = run_seed(seed, steps=args.steps, workdir=Path(tmp) / str(seed))
            print(result.report(), flush=True)
            if args.verbose:
                print(f"  operations {dict(sorted(result.operations.items()))}")
                print(f"  faults {dict(sorted(result.faults.items()))}")
            operations.update(result.operations)
            faults.update(result.faults)
            charged.update(result.charged)
            refunded.update(result.refunded)
            kills += result.kills
            group += result.kills_in_group_commit
            recovery += result.kills_in_recovery
            if result.violation is not None:
                failed.append(seed)
    print(f"total: {args.seeds} seeds x {args.steps} steps, {sum(operations.values())} operations, {kills} kills "
          f"({group} in a group commit, {recovery} in recovery), {sum(faults.values())} faults, "
          f"violations {len(failed)}{' (seeds ' + ', '.join(map(str, failed)) + ')' if failed else ''}")
    print(f"operations: {dict(sorted(operations.items()))}")
    print(f"faults: {dict(sorted(faults.items()))}")
    print(f"charged by the provider, per channel: {dict(sorted(charged.items()))}; "
          f"refunds it executed: {dict(sorted(refunded.items()))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

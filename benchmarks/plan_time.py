"""Planning time of DPFL (and, for scale, the baselines): cold start, including the
strip tables, per model on a testbed. Prints min and median over repeats.

    .venv/bin/python benchmarks/plan_time.py [--testbed mixed-8] [--repeats 15]
        [--strategies edgeci edgeci-halo] [--all]
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import STRATEGIES, plan
from edgeci_p2p.planners.testbeds import load_testbed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--testbed", default="mixed-8")
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet34"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--strategies", nargs="+", default=["edgeci"], choices=STRATEGIES)
    ap.add_argument("--all", action="store_true", help="time every strategy, baselines too")
    args = ap.parse_args()
    tb = load_testbed(args.testbed)
    strategies = STRATEGIES if args.all else tuple(args.strategies)
    print(f"planning time on {tb.name} ({len(tb.devices)} devices), cold, {args.repeats} runs")
    print(f"{'model':<10} {'strategy':<11} {'min ms':>8} {'median ms':>10} {'stages':>7}")
    for model in args.models:
        spec = spec_for(model)
        for strategy in strategies:
            times = []
            p = None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                p = plan(strategy, spec, tb)  # a fresh Context each time: nothing cached
                times.append(time.perf_counter() - t0)
            assert p is not None
            print(
                f"{model:<10} {strategy:<11} {min(times) * 1e3:>8.1f} "
                f"{statistics.median(times) * 1e3:>10.1f} {len(p.stages):>7}"
            )


if __name__ == "__main__":
    main()

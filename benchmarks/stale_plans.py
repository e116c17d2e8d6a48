"""How much each traced request's plan lost to its age: the plan it ran, priced on the
bids of its own round, against a plan made afresh for those bids.

An auctioneer answers a round whose bids moved with the plan it has, priced anew, and
plans the new bids in the background (``aio/refresh.py``); a busy one runs that older
plan for a while. ``benchmarks/cluster.py --traces DIR`` keeps every measured request's
plan and the bids it was priced on (``plan.testbed``). This re-simulates the plan on them
(which must give the stored prediction: it is printed when it does not, a sign that the
map sizes assumed here, ``--zeros`` and ``--size``, differ from the daemon's) and plans
them afresh with the same planner, then prints both per request and the median of
in use / fresh - 1. By the plans' own cost model: the twenty-fourth session found a
fresher plan no faster when the bids had moved by noise (docs/cluster-benchmark.md).

    .venv/bin/python benchmarks/stale_plans.py 'DIR/vgg16-edgeci-halo-*.json' [--json]
        [--zeros 0.5] [--size 224 224] [--float-input]

A fresh plan takes 0.2-0.8 s of CPU per request: run it when no benchmark is.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import statistics
from typing import Any

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.density import with_zeros
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan as make_plan

MATCH = 5e-3
"""Relative difference under which the re-simulated plan matches its stored prediction."""


def staleness(doc: dict[str, Any], spec: ModelSpec) -> dict[str, Any] | None:
    """One trace's plan in use and a fresh plan for its bids (None: no bids in it, e.g.
    a request run whole here without an auction)."""
    stored = doc.get("plan", {})
    tb = stored.get("testbed")
    if not isinstance(tb, dict) or len(stored.get("devices", ())) < 2:
        return None
    testbed = Testbed.from_dict(tb)
    used = Plan.from_dict(stored)
    in_use = simulate(used, spec, testbed, record=False).latency
    fresh = make_plan(used.strategy, spec, testbed)
    assert fresh.predicted is not None
    predicted = stored.get("predicted")
    return {
        "strategy": used.strategy,
        "bids": testbed.name,
        "stored_ms": None if predicted is None else predicted * 1e3,
        "in_use_ms": in_use * 1e3,
        "fresh_ms": fresh.predicted * 1e3,
        "stale": in_use / fresh.predicted - 1.0,
        "matches": predicted is not None and abs(in_use / predicted - 1.0) < MATCH,
        "stages": [len(used.stages), len(fresh.stages)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("pattern", help="a glob of trace files (quote it)")
    ap.add_argument("--zeros", type=float, default=0.5, help="share of zeros in the maps")
    ap.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    ap.add_argument(
        "--float-input",
        action="store_true",
        help="plan the input at four bytes a value (default: one, as its exact pixels)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    paths = sorted(glob.glob(args.pattern))
    if not paths:
        ap.error(f"no trace matches {args.pattern!r}")
    specs: dict[str, ModelSpec] = {}
    rows: list[dict[str, Any]] = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        model = str(doc.get("plan", {}).get("model", ""))
        if model not in specs:
            spec = with_zeros(spec_for(model, *args.size), args.zeros)
            specs[model] = spec if args.float_input else dataclasses.replace(spec, input_itemsize=1)
        got = staleness(doc, specs[model])
        if got is not None:
            rows.append({"trace": path, **got})
    median = statistics.median(r["stale"] for r in rows) if rows else None
    if args.json:
        print(json.dumps({"rows": rows, "median_stale": median}))
        return 0
    for r in rows:
        note = "" if r["matches"] else f"  (stored {r['stored_ms']:.1f}: sizes differ?)"
        print(
            f"{r['trace']}: in use {r['in_use_ms']:.1f} ms, fresh {r['fresh_ms']:.1f} ms "
            f"({r['stale'] * 100:+.1f}%), stages {r['stages'][0]} -> {r['stages'][1]}{note}"
        )
    if median is None:
        print("no request with an auction's bids in these traces")
    else:
        n = len(rows)
        print(f"{n} requests: the plan in use over a fresh one, median {median * 100:+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

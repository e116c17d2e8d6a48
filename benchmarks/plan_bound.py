"""What the best plan allows on the bids a traced request ran with, and what each fixed
cost takes from it (``edgeci_p2p/planners/bounds.py``).

A kept trace (``benchmarks/cluster.py --traces DIR``) holds the plan a request ran,
the bids it was planned on (``plan.testbed``: speeds, per-call and per-piece seconds,
loop pick-up, links) and the bytes it was planned to move (``plan.planned_spec``). This
plans the same model on those bids again, and again with the links free, with no loop
pick-up, with no fixed costs, and with none of these, and prints each plan's predicted
latency, speed-up and parallel efficiency. No peer runs: it is the planner's view of
the cluster the request saw, so it tells a plan's limits from the runtime's.

    .venv/bin/python benchmarks/plan_bound.py DIR/vgg16-edgeci-halo-09.json
        [--local-ms 820] [--ideal 2.5] [--json]

``--local-ms``: the measured median of ``local`` (the fastest peer alone) to take the
speed-ups against (``cluster.py`` passes its own); without it, the auctioneer alone on
the same bids. ``--ideal``: the ideal speed-up (``cluster.py``: the layout's); without
it, the bids' summed convolution speed over the auctioneer's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan, validate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners.bounds import alone_seconds, bounds, ideal_speedup, stage_kinds


def trace_spec(plan: dict[str, Any]) -> tuple[ModelSpec, bool]:
    """The model as a trace's plan was made for it, and whether the trace said so
    (older traces did not: then the input at four bytes a value, every map whole)."""
    given = plan.get("planned_spec")
    if not isinstance(given, dict):
        return spec_for(str(plan["model"])), False
    _, h, w = (int(x) for x in given["input_shape"])
    spec = spec_for(str(plan["model"]), h, w)
    return (
        dataclasses.replace(
            spec,
            input_itemsize=int(given["input_itemsize"]),
            wire_fraction=tuple(float(x) for x in given["wire_fraction"]),
        ),
        True,
    )


def trace_bounds(
    path: Path, local_ms: float | None = None, ideal: float | None = None
) -> dict[str, Any]:
    """Each variant's best plan on the bids of the request traced in ``path``."""
    plan = json.loads(path.read_text())["plan"]
    spec, exact = trace_spec(plan)
    testbed = Testbed.from_dict(plan["testbed"])
    own = Plan.from_dict(plan)
    validate(own, spec)  # an older trace of another input size fails here, not silently
    alone_ms = alone_seconds(spec, testbed) * 1e3
    base_ms = local_ms if local_ms is not None else alone_ms
    ideal = ideal if ideal is not None else ideal_speedup(testbed)
    rows = [
        {
            "name": b.name,
            "ms": b.seconds * 1e3,
            "speedup": base_ms / (b.seconds * 1e3),
            "efficiency": base_ms / (b.seconds * 1e3) / ideal,
            "stages": b.stages,
            "fresh": b.fresh,
        }
        for b in bounds(str(plan["strategy"]), spec, testbed, own)
    ]
    return {
        "trace": path.name,
        "model": plan["model"],
        "strategy": plan["strategy"],
        "ran": stage_kinds(own),
        "planned_ms": float(plan.get("predicted", 0.0)) * 1e3,
        "alone_ms": alone_ms,
        "against": "measured local" if local_ms is not None else "the auctioneer alone as bid",
        "against_ms": base_ms,
        "ideal": ideal,
        "exact_bytes": exact,
        "bounds": rows,
    }


def summary(b: dict[str, Any]) -> str:
    """One line for a report: the bound as bid, and each variant's."""
    first, *rest = b["bounds"]
    parts = ", ".join(f"{r['name']} {r['ms']:.0f} ({r['efficiency']:.2f})" for r in rest)
    return (
        f"{b['model']} {b['strategy']}: on the bids of {b['trace']} the best plan predicts "
        f"{first['ms']:.0f} ms ({first['stages']}), efficiency {first['efficiency']:.2f} "
        f"against {b['against']}; {parts}"
    )


def table(b: dict[str, Any]) -> list[str]:
    """The trace's bounds as a text table."""
    head = (
        f"{b['model']} {b['strategy']} on the bids of {b['trace']} (it ran {b['ran']}, "
        f"planned {b['planned_ms']:.0f} ms); speed-ups against {b['against']} "
        f"({b['against_ms']:.0f} ms), ideal {b['ideal']:.2f}"
    )
    if not b["exact_bytes"]:
        head += "; the trace gives no planned bytes: float32 input, maps whole"
    lines = [head, f"  {'bids':<17}{'ms':>7}{'speed-up':>10}{'efficiency':>12}  stages"]
    for r in b["bounds"]:
        how = "afresh" if r["fresh"] else "the plans at hand"
        lines.append(
            f"  {r['name']:<17}{r['ms']:7.0f}{r['speedup']:10.2f}{r['efficiency']:12.2f}  "
            f"{r['stages']} ({how})"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+", type=Path, help="kept traces (cluster.py --traces)")
    ap.add_argument("--local-ms", type=float, help="measured median of local to compare with")
    ap.add_argument("--ideal", type=float, help="ideal speed-up (default: from the bids)")
    ap.add_argument("--json", action="store_true", help="print JSON, one object per trace")
    args = ap.parse_args(argv)
    for path in args.traces:
        try:
            b = trace_bounds(path, args.local_ms, args.ideal)
        except (OSError, ValueError, KeyError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 1
        print(json.dumps(b) if args.json else "\n".join(table(b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

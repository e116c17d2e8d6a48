"""Draw a kept request trace (``benchmarks/cluster.py --traces DIR`` keeps one JSON per
measured request) as ``edgeci infer --gantt`` draws a live one: per node, the measured
steps over the plan's predicted ones.

    .venv/bin/python benchmarks/trace_chart.py DIR/vgg16-edgeci-halo-03.json chart.png

Peers are named by their share of a core when the trace's plan gives their speeds
(the fastest is the auctioneer's testbed entry with the smallest seconds per FLOP).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeci_p2p.core.explain import explain, predicted_window
from edgeci_p2p.core.timeline import Timeline
from edgeci_p2p.gantt import draw_timeline


def names_by_speed(plan: dict[str, Any], shares: list[float] | None) -> dict[str, str]:
    """Node id -> a readable name: 'peer<i> (<share> core)' when ``shares`` (fastest
    first) is given, else 'peer<i>' by speed, else the id."""
    devices = plan.get("testbed", {}).get("devices", [])
    speed = {
        str(d["name"]): float(d["compute"]["conv"]["a"])
        for d in devices
        if isinstance(d, dict) and "compute" in d
    }
    out: dict[str, str] = {}
    for i, node in enumerate(sorted(speed, key=speed.__getitem__)):
        label = f"peer{i}"
        if shares is not None and i < len(shares):
            label += f" ({shares[i]:.2f} core)"
        out[node] = label
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", type=Path, help="a JSON file kept by cluster.py --traces")
    p.add_argument("png", type=Path)
    p.add_argument(
        "--shares",
        default="0.4,0.2667,0.2,0.1333",
        help="the peers' CPU shares, fastest first, for their names ('' for none; "
        "default: the 2-core headroom layout)",
    )
    p.add_argument("--explain", action="store_true", help="also print the critical path")
    args = p.parse_args(argv)
    doc = json.loads(args.trace.read_text())
    if "timeline" not in doc or "plan" not in doc:
        print(f"{args.trace}: not a trace kept by cluster.py --traces", file=sys.stderr)
        return 2
    timeline = Timeline.from_dict(doc["timeline"])
    plan = doc["plan"]
    shares = [float(s) for s in args.shares.split(",") if s] or None
    names = names_by_speed(plan, shares)
    title = f"{plan.get('model')}, {plan.get('strategy')}: measured {timeline.end * 1e3:.0f} ms"
    window = predicted_window(timeline)
    if window is not None:
        title += f", {(window[1] - window[0]) * 1e3:.0f} ms predicted"
    draw_timeline(timeline, args.png, names, title)
    print(f"chart: {args.png}")
    if args.explain:
        print("\n".join(explain(timeline, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""When each input slab of a gather stage reached its peer, against the plan.

A gather stage's scatter sends one input slab per remote part through the auctioneer's
link. The simulator (and so every planner) sends them one after another, in part
order, each at the link's rate, and sizes the strips for those arrivals. This reads
traced requests (``benchmarks/cluster.py --traces DIR``, ``edgeci infer --trace``) and
prints, per gather stage and place in the send order, the median arrival of the slab
(the peer's ``queue`` span, on the auctioneer's clock) after the stage's first
``send`` began, against the simulator's on the bids the request was planned with
(``plan.testbed``, ``plan.planned_spec``). In the thirty-fourth session's runs the first
of three slabs arrived at a median 33 ms where the plan had 13-17: written together,
the slabs share the link (docs/cluster-benchmark.md).

    .venv/bin/python benchmarks/trace_scatter.py 'DIR/vgg16-edgeci-0*.json' [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_bound import trace_spec

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.timeline import Timeline
from edgeci_p2p.policy.tile_ids import PARTS_PER_STAGE, STRIP_TILE_BASE


def scatters(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per remote slab of each gather stage of one traced request, in send
    order: the peer, its place in the order, and the arrival after the stage's first
    send, measured and planned (ms)."""
    plan_doc = doc["plan"]
    plan = Plan.from_dict(plan_doc)
    spec, _ = trace_spec(plan_doc)
    testbed = Testbed.from_dict(plan_doc["testbed"])
    events = simulate(plan, spec, testbed).events
    timeline = Timeline.from_dict(doc["timeline"])
    sends: dict[tuple[int, int], float] = {}
    arrived: dict[tuple[int, int], tuple[str, float]] = {}
    for s in timeline.spans:
        if s.stage is None or s.tile is None or s.tile >= STRIP_TILE_BASE:
            continue  # a strip job or the head: no slab of a gather stage
        if s.tile // PARTS_PER_STAGE != s.stage:
            continue  # (spans name a gather tile by its GatherTile.base)
        if s.name == "send":
            sends[(s.stage, s.tile)] = s.start
        elif s.name == "queue" and s.node != plan.devices[plan.auctioneer]:
            arrived[(s.stage, s.tile)] = (s.node, s.start)
    rows = []
    for si in sorted({k[0] for k in sends}):
        order = sorted((k for k in sends if k[0] == si), key=lambda k: sends[k])
        planned_sends = [
            e for e in events if e.stage == si and e.lane == "send" and e.device == plan.auctioneer
        ]
        if not planned_sends:
            continue
        t0, p0 = sends[order[0]], min(e.start for e in planned_sends)
        # Each part's slab as the simulator received it, by (device, label); a row
        # strip's label is unique on its device (2-D tiles of one row band are not).
        recv = {(e.device, e.label): e.stop for e in events if e.stage == si and e.lane == "recv"}
        stage = plan.stages[si]
        for place, key in enumerate(order):
            if key not in arrived:
                continue
            node, at = arrived[key]
            part = stage.parts[key[1] % PARTS_PER_STAGE]
            rows_of = f"{part.region.rows.start}:{part.region.rows.stop}"
            planned = recv.get((part.device, f"[{stage.start},{stage.stop}) {rows_of}"))
            rows.append(
                {
                    "stage": si,
                    "place": place,
                    "peer": node,
                    "measured_ms": (at - t0) * 1e3,
                    "planned_ms": None if planned is None else (planned - p0) * 1e3,
                }
            )
    return rows


def table(paths: list[str]) -> list[dict[str, Any]]:
    """Medians over ``paths`` per (stage, place in the send order)."""
    acc: dict[tuple[int, int], dict[str, list[float]]] = defaultdict(
        lambda: {"measured": [], "planned": []}
    )
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        for r in scatters(doc):
            a = acc[(r["stage"], r["place"])]
            a["measured"].append(r["measured_ms"])
            if r["planned_ms"] is not None:
                a["planned"].append(r["planned_ms"])
    return [
        {
            "stage": si,
            "place": place,
            "n": len(a["measured"]),
            "measured_ms": statistics.median(a["measured"]),
            "measured_range_ms": [min(a["measured"]), max(a["measured"])],
            "planned_ms": statistics.median(a["planned"]) if a["planned"] else None,
        }
        for (si, place), a in sorted(acc.items())
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("traces", help="a glob of kept traces, e.g. 'DIR/vgg16-edgeci-0*.json'")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(args.traces))
    if not paths:
        p.error(f"no trace files match {args.traces}")
    rows = table(paths)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{len(paths)} traces; arrival of each slab after the stage's first send (ms)")
    print(f"{'stage':>5} {'#':>2} {'n':>3} {'measured':>9} {'range':>11} {'planned':>8}")
    for r in rows:
        lo, hi = r["measured_range_ms"]
        planned = "-" if r["planned_ms"] is None else f"{r['planned_ms']:.1f}"
        print(
            f"{r['stage']:>5} {r['place'] + 1:>2} {r['n']:>3} {r['measured_ms']:9.1f} "
            f"{lo:5.1f}-{hi:<5.1f} {planned:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgeci plan``: plan a model on a testbed with a strategy; print the plan and its
simulated latency, optionally as JSON and as a Gantt chart."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgeci_p2p.commands import MODELS_HELP, add_zeros_argument


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="plan a model on a testbed (edgeci = DPFL, or a baseline) and simulate it"
    )
    p.add_argument("--model", default="vgg16", help=MODELS_HELP)
    p.add_argument("--testbed", default="pi4-wifi-4", help="a shipped testbed name or a JSON path")
    p.add_argument(
        "--strategy",
        default="edgeci",
        help="edgeci, edgeci-halo, local, modnn, deepthings, edgeld, aofl",
    )
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=(224, 224))
    add_zeros_argument(p)
    p.add_argument("--json", action="store_true", help="print the plan and simulation as JSON")
    p.add_argument("--gantt", metavar="PNG", help="draw the simulated timeline to this file")
    p.add_argument(
        "--peer",
        metavar="HOST:PORT",
        help="dry run on a live cluster: plan with its current bids instead of a testbed",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS (only against a peer started with --plaintext; benchmarks and diagnosis)",
    )
    p.add_argument("--cluster-key-file", help="with --peer: file with the shared cluster key")
    p.set_defaults(func=run)


def _live(args: argparse.Namespace) -> tuple[Any, Any, float]:
    """Plan on the live cluster behind ``--peer``: its bids become the testbed."""
    from edgeci_p2p.aio.client import SyncClient, read_key
    from edgeci_p2p.core.cost import Testbed
    from edgeci_p2p.core.plan import Plan

    key = read_key(args.cluster_key_file) if args.cluster_key_file else None
    body = SyncClient(args.peer, key=key, plaintext=args.plaintext).plan(
        args.model, args.strategy, tuple(args.size)
    )
    return (
        Plan.from_dict(body["plan"]),
        Testbed.from_dict(body["testbed"]),
        float(body["timing"]["auction"]),
    )


def run(args: argparse.Namespace) -> int:
    import time

    from edgeci_p2p.core.density import with_zeros
    from edgeci_p2p.core.plan import validate
    from edgeci_p2p.core.sim import simulate
    from edgeci_p2p.nn.models import check_model_name
    from edgeci_p2p.nn.spec import spec_for
    from edgeci_p2p.planners import plan
    from edgeci_p2p.planners.testbeds import load_testbed

    check_model_name(args.model)
    spec = spec_for(args.model, *args.size)
    spec = with_zeros(spec, args.zeros)
    if args.peer:
        p, tb, planning = _live(args)
    else:
        tb = load_testbed(args.testbed)
        t0 = time.perf_counter()
        p = plan(args.strategy, spec, tb)
        planning = time.perf_counter() - t0
    validate(p, spec)
    res = simulate(p, spec, tb)
    if args.gantt:
        from edgeci_p2p.gantt import draw_gantt

        draw_gantt(p, res, args.gantt)
    if args.json:
        out: dict[str, Any] = {
            "plan": p.to_dict(),
            "latency_ms": res.latency * 1e3,
            "bytes": res.bytes_moved,
            "planning_ms": planning * 1e3,
            "stage_end_ms": [t * 1e3 for t in res.stage_ends],
            "busy_ms": {
                name: {lane: res.busy(d, lane) * 1e3 for lane in ("compute", "send", "recv")}
                for d, name in enumerate(p.devices)
            },
        }
        print(json.dumps(out))
        return 0
    print(p)
    print(
        f"simulated latency {res.latency * 1e3:.1f} ms, {res.bytes_moved / 1e6:.2f} MB moved, "
        f"planned in {planning * 1e3:.1f} ms"
    )
    for d, name in enumerate(p.devices):
        print(
            f"  {name:<16} compute {res.busy(d) * 1e3:8.1f} ms  "
            f"send {res.busy(d, 'send') * 1e3:8.1f} ms  recv {res.busy(d, 'recv') * 1e3:8.1f} ms"
        )
    if args.gantt:
        print(f"gantt chart written to {args.gantt}")
    return 0

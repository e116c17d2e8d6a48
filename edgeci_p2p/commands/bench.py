"""``edgeci bench sim``: every strategy on every model x testbed in the simulator, as a
table with EdgeCI's improvement over each baseline and edgeci-halo's over edgeci (with
the bytes through the auctioneer's link for both), or as JSON rows."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgeci_p2p.commands import add_zeros_argument

DEFAULT_MODELS = ("vgg16", "resnet34")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmarks; 'bench sim' compares planners in the plan simulator"
    )
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    s: argparse.ArgumentParser = bsub.add_parser(
        "sim", help="simulated latency of every strategy on models x testbeds"
    )
    s.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    s.add_argument(
        "--testbeds", nargs="+", default=None, help="shipped names or JSON paths (default: all)"
    )
    s.add_argument("--strategies", nargs="+", default=None, help="default: all")
    s.add_argument("--json", action="store_true", help="print a JSON list of rows")
    add_zeros_argument(s)
    s.add_argument(
        "--scenario",
        choices=("static", "dynamic-load"),
        default="static",
        help="dynamic-load: Poisson requests on a shared, loaded cluster (AWAS re-bids "
        "per request vs static-capacity baselines; see edgeci_p2p/scenarios/dynamic_load.py)",
    )
    s.set_defaults(func=run_sim)


def sim_rows(
    models: list[str], testbeds: list[str], strategies: list[str], zeros: float = 0.0
) -> list[dict[str, Any]]:
    from edgeci_p2p.core.density import with_zeros
    from edgeci_p2p.core.plan import validate
    from edgeci_p2p.core.sim import simulate
    from edgeci_p2p.nn.models import check_model_name
    from edgeci_p2p.nn.spec import spec_for
    from edgeci_p2p.planners import plan
    from edgeci_p2p.planners.context import Context
    from edgeci_p2p.planners.testbeds import load_testbed

    rows: list[dict[str, Any]] = []
    for model in models:
        check_model_name(model)
        spec = spec_for(model)
        spec = with_zeros(spec, zeros)
        for name in testbeds:
            tb = load_testbed(name)
            ctx = Context(spec, tb)
            for strategy in strategies:
                p = plan(strategy, spec, tb, ctx)
                validate(p, spec)
                res = simulate(p, spec, tb, ctx.work, record=False)
                rows.append(
                    {
                        "model": model,
                        "testbed": tb.name,
                        "strategy": strategy,
                        "latency_ms": round(res.latency * 1e3, 3),
                        "bytes": res.bytes_moved,
                        "auctioneer_bytes": res.auctioneer_bytes,
                    }
                )
    return rows


def improvement_table(rows: list[dict[str, Any]]) -> str:
    """Latency per strategy and EdgeCI's latency reduction over each baseline.

    ``+x%`` means EdgeCI's latency is x% lower than the baseline's
    (``1 - ours / theirs``); the speed-up ``theirs / ours`` is in parentheses.
    """
    from edgeci_p2p.planners import OURS

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    baselines = [s for s in strategies if s not in OURS]
    keyed = {(r["model"], r["testbed"], r["strategy"]): r for r in rows}
    cases = list(dict.fromkeys((r["model"], r["testbed"]) for r in rows))
    lines = ["simulated latency (ms)"]
    head = f"{'model':<10} {'testbed':<12}" + "".join(f"{s:>12}" for s in strategies)
    lines += [head, "-" * len(head)]
    for m, t in cases:
        lines.append(
            f"{m:<10} {t:<12}"
            + "".join(f"{keyed[(m, t, s)]['latency_ms']:>12.1f}" for s in strategies)
        )
    if "edgeci" in strategies and baselines:
        lines += ["", "EdgeCI's latency reduction vs each baseline (speed-up in parentheses)"]
        head = f"{'model':<10} {'testbed':<12}" + "".join(f"{s:>17}" for s in baselines)
        lines += [head, "-" * len(head)]
        for m, t in cases:
            ours = keyed[(m, t, "edgeci")]["latency_ms"]
            cells = []
            for s in baselines:
                theirs = keyed[(m, t, s)]["latency_ms"]
                cells.append(f"{(1 - ours / theirs) * 100:>+8.1f}% ({theirs / ours:4.2f}x)")
            lines.append(f"{m:<10} {t:<12}" + "".join(f"{c:>17}" for c in cells))
    if all(s in strategies for s in OURS):
        lines += ["", halo_table(rows)]
    return "\n".join(lines)


def halo_table(rows: list[dict[str, Any]]) -> str:
    """edgeci-halo against edgeci: latency reduction and bytes through the auctioneer.

    ``+x%`` means edgeci-halo's latency is x% lower than edgeci's; the auctioneer's
    bytes are per request, in and out of its own link.
    """
    keyed = {(r["model"], r["testbed"], r["strategy"]): r for r in rows}
    cases = list(dict.fromkeys((r["model"], r["testbed"]) for r in rows))
    lines = ["edgeci-halo (strip-resident, peer-to-peer halos) vs edgeci"]
    head = (
        f"{'model':<10} {'testbed':<12}{'edgeci ms':>11}{'halo ms':>10}{'reduction':>11}"
        f"{'edgeci MB@auct':>16}{'halo MB@auct':>14}"
    )
    lines += [head, "-" * len(head)]
    for m, t in cases:
        g, h = keyed[(m, t, "edgeci")], keyed[(m, t, "edgeci-halo")]
        red = (1 - h["latency_ms"] / g["latency_ms"]) * 100
        lines.append(
            f"{m:<10} {t:<12}{g['latency_ms']:>11.1f}{h['latency_ms']:>10.1f}{red:>+10.1f}%"
            f"{g['auctioneer_bytes'] / 1e6:>16.2f}{h['auctioneer_bytes'] / 1e6:>14.2f}"
        )
    return "\n".join(lines)


def run_sim(args: argparse.Namespace) -> int:
    from edgeci_p2p.planners import STRATEGIES
    from edgeci_p2p.planners.testbeds import testbed_names

    if args.scenario == "dynamic-load":
        from edgeci_p2p.nn.spec import spec_for
        from edgeci_p2p.scenarios.dynamic_load import run_command

        print(run_command(args.models, args.testbeds, args.strategies, args.json, spec_for))
        return 0
    testbeds = args.testbeds or testbed_names()
    strategies = args.strategies or list(STRATEGIES)
    rows = sim_rows(args.models, testbeds, strategies, args.zeros)
    if args.json:
        print(json.dumps(rows))
    else:
        print(improvement_table(rows))
    return 0

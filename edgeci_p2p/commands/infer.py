"""``edgeci infer``: classify an image on a running cluster (any peer accepts)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeci_p2p.core.timeline import Timeline


def add_peer_arguments(p: argparse.ArgumentParser) -> None:
    """``--peer`` (repeatable, or comma-separated) or ``--mdns-interface``: the peers a
    client may send to; when the first is lost mid-request, the next takes over."""
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer of the cluster (repeatable, or a comma-separated list): requests go to "
        "the first that answers and, if it is lost before answering, to the next",
    )
    p.add_argument(
        "--mdns-interface",
        action="append",
        default=[],
        metavar="ADDR",
        help="find peers by browsing mDNS on this interface address (repeatable); "
        "with --peer, those are tried first",
    )


def client_of(args: argparse.Namespace, key: bytes | None, **kwargs: Any) -> Any:
    """The :class:`~edgeci_p2p.aio.client.Client` that ``--peer``/``--mdns-interface`` name."""
    from edgeci_p2p.aio.client import Client

    if not args.peer and not args.mdns_interface:
        raise ValueError("give --peer HOST:PORT (repeatable) or --mdns-interface ADDR")
    return Client(
        args.peer,
        key=key,
        mdns_interfaces=args.mdns_interface,
        plaintext=getattr(args, "plaintext", False),
        **kwargs,
    )


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("infer", help="classify an image on the cluster")
    add_peer_arguments(p)
    p.add_argument("--model", default="resnet34")
    p.add_argument(
        "--strategy",
        default="edgeci",
        help="edgeci, edgeci-halo, local, modnn, deepthings, edgeld or aofl",
    )
    p.add_argument(
        "--size",
        default="224",
        choices=["224", "native"],
        help="224: resize + centre crop; native: the image's own size",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="have the peer also run the unsplit model and report the largest difference "
        "of the logits (max_abs_diff; max_abs_ref is the largest logit, for scale)",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS (only against a peer started with --plaintext; benchmarks and diagnosis)",
    )
    p.add_argument(
        "--cluster-key-file",
        type=Path,
        help="file with the shared cluster key (whitespace around it is stripped)",
    )
    p.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="record the request's timeline on every node and write it as Chrome trace-event "
        "JSON (open it in https://ui.perfetto.dev or chrome://tracing)",
    )
    p.add_argument(
        "--gantt",
        type=Path,
        metavar="PNG",
        help="draw the request's measured timeline per node over its plan's (implies tracing)",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="print the request's critical path, measured against predicted, and where the "
        "time went (implies tracing)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object as the last line")
    p.add_argument("image", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeci_p2p.aio.client import ClientError, ConnectionLost, read_key

    data = args.image.read_bytes()
    key = read_key(args.cluster_key_file) if args.cluster_key_file else None
    traced = bool(args.trace or args.gantt or args.explain)
    names: dict[str, str] = {}
    answered = 0.0

    async def go() -> Any:
        nonlocal answered
        async with client_of(args, key) as c:
            result = await c.infer(
                data,
                model=args.model,
                strategy=args.strategy,
                size=args.size,
                verify=args.verify,
                trace=traced,
            )
            answered = time.perf_counter()
            if traced:  # the nodes' names, from the cluster view (after the timed request)
                with contextlib.suppress(ClientError, ConnectionLost):
                    names.update({p["id"]: p.get("name") or p["id"] for p in await c.peers()})
            return result

    t0 = time.perf_counter()
    result = asyncio.run(go())
    latency = answered - t0
    out: dict[str, Any] = {
        "model": result.model,
        "strategy": result.strategy,
        "top5": [{"index": t.index, "label": t.label, "prob": t.prob} for t in result.top_k],
        "latency_ms": round(latency * 1000, 1),
        "timing": result.timing,
        "plan": dict(result.plan),
    }
    if args.verify:
        import numpy as np

        if result.max_abs_diff is None:
            raise ConnectionError("the peer did not report max_abs_diff (an older edgeci-peer?)")
        out["max_abs_diff"] = result.max_abs_diff
        # For scale: the unsplit model's largest |logit| is within max_abs_diff of this.
        out["max_abs_ref"] = float(np.abs(np.asarray(result.logits)).max())
    report: list[str] = []
    if traced:
        if result.trace is None:
            raise ConnectionError("the peer sent no trace (an edgeci-peer older than 'trace'?)")
        report = _traced(args, result.trace, dict(result.plan), names, out)
    if not args.json:
        print(f"{result.model} via {result.strategy}: {out['latency_ms']} ms")
        print(result.plan.get("text", ""))
        for i, t in enumerate(result.top_k, 1):
            print(f"  top{i}: {t.label:<28} p={t.prob:.4f} (class {t.index})")
        if args.verify:
            print(
                f"  verify: max_abs_diff {out['max_abs_diff']:.3g} "
                f"(max_abs_ref {out['max_abs_ref']:.3g})"
            )
        for line in report:
            print(line)
    print(json.dumps(out) if args.json else "", end="\n" if args.json else "")
    return 0


def _traced(
    args: argparse.Namespace,
    trace: dict[str, Any],
    plan: dict[str, Any],
    names: dict[str, str],
    out: dict[str, Any],
) -> list[str]:
    """Write the trace (``--trace``) and the chart (``--gantt``); the lines of
    ``--explain`` (also into ``out`` for ``--json``)."""
    from edgeci_p2p.core.explain import explain, where_the_time_went
    from edgeci_p2p.core.timeline import Timeline

    timeline = Timeline.from_dict(trace)
    names = _names(timeline, plan, names)
    if args.trace:
        doc = timeline.chrome(names)
        doc["otherData"] = {
            "model": str(plan.get("model", args.model)),
            "strategy": args.strategy,
            "plan": str(plan.get("text", "")),
        }
        args.trace.write_text(json.dumps(doc))
        out["trace_file"] = str(args.trace)
    if args.gantt:
        from edgeci_p2p.gantt import draw_timeline

        draw_timeline(timeline, args.gantt, names, _title(timeline, plan, args))
        out["gantt_file"] = str(args.gantt)
    if not args.explain:
        return []
    out["where_the_time_went_ms"] = {
        k: [round(m * 1e3, 2), None if p is None else round(p * 1e3, 2)]
        for k, (m, p) in where_the_time_went(timeline).items()
    }
    return ["", *explain(timeline, names)]


def _names(timeline: Timeline, plan: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """Each node's name: the cluster view's, else the plan's testbed's, else its id."""
    out = {n: n for n in timeline.nodes}
    testbed = plan.get("testbed")
    if isinstance(testbed, dict):
        devices = testbed.get("devices", [])
        for node, dev in zip(plan.get("nodes", []), devices, strict=False):
            if isinstance(dev, dict) and dev.get("name"):
                out[str(node)] = str(dev["name"])
    out.update(names)
    return out


def _title(timeline: Timeline, plan: dict[str, Any], args: argparse.Namespace) -> str:
    from edgeci_p2p.core.explain import predicted_window

    model = plan.get("model", args.model)
    title = f"{model}, {plan.get('strategy', args.strategy)}: measured {timeline.end * 1e3:.0f} ms"
    window = predicted_window(timeline)
    if window is not None:
        p0, p1 = window
        title += (
            f"; from the plan's start {(timeline.end - p0) * 1e3:.0f} ms "
            f"against {(p1 - p0) * 1e3:.0f} ms predicted"
        )
    return title

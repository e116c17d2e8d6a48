"""Per peer and plan stage, measured against predicted, over a set of traced requests.

``benchmarks/cluster.py --traces DIR`` keeps one trace per measured request; this
reads those of one model and strategy and prints, for every (peer, stage, step) of
kind compute, halo-wait or head, the median duration and end against the plan's
prediction. Where the critical path (``edgeci infer --explain``) says *that* a request
ran late, this says on which peer and from which stage on. Then, per peer, the spread of
its compute per stage against the plan and its halo waits per request: what the halo
barriers cost.

    .venv/bin/python benchmarks/trace_stages.py 'DIR/vgg16-edgeci-halo-*.json' [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from collections import defaultdict
from typing import Any

from edgeci_p2p.core.timeline import Timeline

STEPS = ("compute", "halo-wait", "head")
QUANTILES = ("p10", "p25", "p50", "p75", "p90")


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def stage_table(paths: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """The last trace's plan text, and one row per (peer index, stage, step)."""
    acc: dict[tuple[str, int, str], dict[str, list[float]]] = defaultdict(
        lambda: {"dur": [], "pred": [], "end": [], "pred_end": []}
    )
    text = ""
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        tl = Timeline.from_dict(doc["timeline"])
        nodes = [str(n) for n in doc.get("plan", {}).get("nodes", [])]
        text = str(doc.get("plan", {}).get("text", ""))
        for s in tl.spans:
            if s.name not in STEPS:
                continue
            peer = str(nodes.index(s.node)) if s.node in nodes else s.node[:8]
            a = acc[(peer, -1 if s.stage is None else s.stage, s.name)]
            a["dur"].append(s.seconds * 1e3)
            a["end"].append(s.stop * 1e3)
            if s.predicted is not None:
                a["pred"].append((s.predicted[1] - s.predicted[0]) * 1e3)
                a["pred_end"].append(s.predicted[1] * 1e3)
    rows = [
        {
            "peer": peer,
            "stage": stage,
            "step": step,
            "n": len(a["dur"]),
            "ms": _median(a["dur"]),
            "predicted_ms": _median(a["pred"]),
            "end_ms": _median(a["end"]),
            "predicted_end_ms": _median(a["pred_end"]),
        }
        for (peer, stage, step), a in sorted(acc.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    return text, rows


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[round(q * (len(xs) - 1))]


def peer_table(paths: list[str]) -> list[dict[str, Any]]:
    """Per peer: how its compute per stage (its pieces of the stage summed, one value
    per request and stage) ran against the plan's prediction for it, as quantiles of
    measured / predicted, and its halo waits per request.

    A halo boundary waits for the later neighbour, so what a segment loses to its
    barriers comes from the spread of these ratios, not their median (the plan is
    balanced on the median); the waits say where it was paid. On the emulated cluster
    the pieces' 90th percentile ran 1.03-1.69x their plan and the waits 20-160 ms per
    peer per request, by run (docs/cluster-benchmark.md, twenty-third session)."""
    ratios: dict[str, list[float]] = defaultdict(list)
    waits: dict[str, float] = defaultdict(float)
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        tl = Timeline.from_dict(doc["timeline"])
        nodes = [str(n) for n in doc.get("plan", {}).get("nodes", [])]
        per: dict[tuple[str, int], list[float]] = {}
        for s in tl.spans:
            peer = str(nodes.index(s.node)) if s.node in nodes else s.node[:8]
            if s.name == "halo-wait":
                waits[peer] += s.seconds * 1e3
            elif s.name == "compute" and s.stage is not None and s.predicted is not None:
                got = per.setdefault((peer, s.stage), [0.0, s.predicted[1] - s.predicted[0]])
                got[0] += s.seconds
        for (peer, _), (measured, predicted) in per.items():
            if predicted > 0:
                ratios[peer].append(measured / predicted)
    return [
        {
            "peer": peer,
            "n": len(ratios[peer]),
            **{f"p{q}": _quantile(ratios[peer], q / 100) for q in (10, 25, 50, 75, 90)},
            "halo_wait_ms_per_request": waits[peer] / len(paths),
        }
        for peer in sorted(set(ratios) | set(waits))
    ]


def _f(v: float | None) -> str:
    return "      -" if v is None else f"{v:7.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pattern", help="a glob of trace files (quote it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    paths = sorted(glob.glob(args.pattern))
    if not paths:
        ap.error(f"no trace files match {args.pattern!r}")
    text, rows = stage_table(paths)
    peers = peer_table(paths)
    if args.json:
        doc = {"traces": len(paths), "plan": text, "rows": rows, "peers": peers}
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{len(paths)} traces; the last one's plan:\n{text}\n")
    print("peer stage step          n   median ms  predicted   end ms  predicted end")
    for r in rows:
        print(
            f"{r['peer']:>4} {r['stage']:>5} {r['step']:<10} {r['n']:4d}    "
            f"{_f(r['ms'])}    {_f(r['predicted_ms'])}  "
            f"{_f(r['end_ms'])}  {_f(r['predicted_end_ms'])}"
        )
    print("\nper peer: compute per stage / predicted (quantiles), halo waits per request")
    print("peer     n     p10    p25    p50    p75    p90   halo-wait ms")
    for r in peers:
        q = " ".join("     -" if r[k] is None else f"{r[k]:6.2f}" for k in QUANTILES)
        print(f"{r['peer']:>4} {r['n']:5d} {q}   {r['halo_wait_ms_per_request']:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

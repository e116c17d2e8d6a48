"""``edgeci infer``: classify an image on a running cluster (any peer accepts)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("infer", help="classify an image on the cluster")
    p.add_argument("--peer", required=True, metavar="HOST:PORT", help="any peer of the cluster")
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
        "--cluster-key-file",
        type=Path,
        help="file with the shared cluster key (whitespace around it is stripped)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object as the last line")
    p.add_argument("image", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeci_p2p.aio.client import Client, read_key

    data = args.image.read_bytes()
    key = read_key(args.cluster_key_file) if args.cluster_key_file else None

    async def go() -> Any:
        async with Client(args.peer, key=key) as c:
            return await c.infer(
                data, model=args.model, strategy=args.strategy, size=args.size, verify=args.verify
            )

    t0 = time.perf_counter()
    result = asyncio.run(go())
    latency = time.perf_counter() - t0
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
    print(json.dumps(out) if args.json else "", end="\n" if args.json else "")
    return 0

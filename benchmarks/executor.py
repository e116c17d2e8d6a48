"""Fused-executor overhead and halo overhead (a benchmark: prints figures, asserts nothing).

1. One strip that is the whole map, through the fused executor, vs one plain
   forward of the same units through the model's own modules: the ratio of the
   medians over several runs (1 torch thread). Target <= 1.03.
2. Halo overhead (extra FLOPs in %) of 2, 4 and 8 equal row strips when the whole
   feature extractor is fused vs when each pool-delimited block is fused alone.

    .venv/bin/python benchmarks/executor.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from edgeci_p2p.core.geometry import full_region, halo_overhead, proportional_strips, row_strips
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import load_model


def _median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pool_blocks(spec: ModelSpec) -> list[tuple[int, int]]:
    """Unit ranges that end at each spatial downsampling (EdgeLD-style blocks)."""
    cuts = [0]
    for b in range(1, spec.n_units + 1):
        if b == spec.n_units or spec.shape_at(b)[1] < spec.shape_at(b - 1)[1]:
            cuts.append(b)
    return list(itertools.pairwise(cuts))


def equal_strips(spec: ModelSpec, start: int, stop: int, n: int) -> list:  # type: ignore[type-arg]
    _, h, w = spec.shape_at(stop)
    parts = proportional_strips(h, [1.0] * min(n, h))
    return row_strips(h, w, [p.stop for p in parts[:-1]])


def halo_table(spec: ModelSpec) -> dict[str, dict[int, float]]:
    whole: dict[int, float] = {}
    per_pool: dict[int, float] = {}
    blocks = pool_blocks(spec)
    from edgeci_p2p.core.geometry import full_flops

    base = sum(full_flops(spec, a, b) for a, b in blocks)
    for n in (2, 4, 8):
        whole[n] = 100 * halo_overhead(
            spec, 0, spec.n_units, equal_strips(spec, 0, spec.n_units, n)
        )
        extra = sum(
            (1 + halo_overhead(spec, a, b, equal_strips(spec, a, b, n))) * full_flops(spec, a, b)
            for a, b in blocks
        )
        per_pool[n] = 100 * (extra / base - 1)
    return {"fuse_all": whole, "fuse_per_pool_block": per_pool}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet34"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        print(f"[{name}] loading...", file=sys.stderr)
        lm = load_model(name)
        spec = describe(lm.module, name, 224, 224)
        ex = FusedExecutor(lm.module, spec)
        x = torch.randn(1, 3, 224, 224)
        n = spec.n_units
        _, h, w = spec.shape_at(n)
        # Warm up both paths (oneDNN builds a primitive per shape on first use).
        ex.run(0, n, full_region(h, w), x)
        ex.reference(x)
        print(f"[{name}] timing {args.runs} runs of each path...", file=sys.stderr)
        whole = full_region(h, w)
        fused = _median_seconds(partial(ex.run, 0, n, whole, x), args.runs)
        plain = _median_seconds(partial(ex.reference, x), args.runs)
        rows.append(
            {
                "model": name,
                "fused_ms": round(fused * 1000, 1),
                "plain_ms": round(plain * 1000, 1),
                "ratio": round(fused / plain, 3),
                "halo_pct": {
                    k: {str(n_): round(v, 1) for n_, v in d.items()}
                    for k, d in halo_table(spec).items()
                },
            }
        )
    if args.json:
        print(json.dumps({"rows": rows}))
        return 0
    print("model     fused ms  plain ms  ratio   halo % (2/4/8 strips): fuse-all | per pool block")
    for r in rows:
        fa = "/".join(str(v) for v in r["halo_pct"]["fuse_all"].values())
        pp = "/".join(str(v) for v in r["halo_pct"]["fuse_per_pool_block"].values())
        print(
            f"{r['model']:<9} {r['fused_ms']:>8} {r['plain_ms']:>9} {r['ratio']:>6}"
            f"   {fa:>22} | {pp}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgeci profile``: measure (or show the cached measurement of) this machine's compute
model, per unit kind ``seconds = a * FLOPs + b``."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "profile", help="measure this machine's per-kind compute model (cached per host/threads)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--refresh", action="store_true", help="measure again even if cached")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeci_p2p.nn.profiler import cache_path, load_or_measure

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, not {args.threads}")
    prof, cached = load_or_measure(args.threads, refresh=args.refresh)
    if args.json:
        d = prof.to_dict()
        d["cache"] = str(cache_path(prof.threads))
        d["from_cache"] = cached
        print(json.dumps(d))
        return 0
    origin = (
        f"cached in {cache_path(prof.threads)}" if cached else f"measured in {prof.seconds:.1f} s"
    )
    print(
        f"compute model of {prof.host} (torch {prof.torch_version}, {prof.threads} thread(s)), "
        f"{origin}"
    )
    print(f"  {'kind':<6} {'GFLOP/s':>9} {'b (ms)':>8} {'fit error':>10} {'points':>7}")
    for kind, fit in prof.compute.fits.items():
        n = len(prof.points.get(kind, []))
        err = fit.rel_error * 100
        print(f"  {kind:<6} {fit.gflops:>9.2f} {fit.b * 1e3:>8.3f} {err:>9.1f}% {n:>7}")
    return 0

"""What one malloc arena per peer process costs in latency, and saves in memory: two
clusters of loopback peers side by side in one run, one as ``edgeci-peer`` starts
under ``--memory-limit`` (one glibc arena, ``meminfo.one_malloc_arena``), one with
``MALLOC_ARENA_MAX`` set to glibc's own default (8 per core), so every thread gets
its arena, as without a limit (issue 24). Both arms' peers get ``--memory-limit 4G``
(no weights are dropped at that size).

Both clusters run at once, each on static addresses (no mDNS), but only one serves
at a time: a client sends requests back to back in blocks, A B B A A B ..., so that
a drift in machine load touches both alike. Two clusters of the same build differ
by themselves, by ~6% in an A/A trial here (each profiles its peers and plans on
its own), so the clusters are started afresh ``--swaps`` times, the arms taking
turns at starting first, and each arm's median is over all its clusters. Prints
each arm's median latency, their ratio and its peers' VmRSS after the last swap
(once trimmed: 3 s idle); ``--json`` adds a last line.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/malloc_arenas.py [--model vgg16]
        [--peers 3] [--swaps 4] [--blocks 4] [--per-block 5] [--strategy edgeci] [--json]

Loopback only; every loop is bounded by the counts given; the peers are stopped at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeci_p2p.aio.client import Client
from edgeci_p2p.demo import ready_port, start_peer
from edgeci_p2p.nn.images import sample_image_path
from tests.daemons import stop_processes

ARMS = {"one arena": None, "per-thread arenas": str(8 * (os.cpu_count() or 1))}
"""Arm -> MALLOC_ARENA_MAX for its peers (None: unset, the peer asks for one arena)."""


def start_cluster(
    tmp: str, arm: str, n: int, model: str, key_file: str, swap: int
) -> tuple[list[subprocess.Popen[str]], int]:
    env = dict(os.environ)
    env.pop("MALLOC_ARENA_MAX", None)
    if ARMS[arm] is not None:
        env["MALLOC_ARENA_MAX"] = str(ARMS[arm])
    procs: list[subprocess.Popen[str]] = []
    first = 0
    for i in range(n):
        extra = ["--no-mdns", "--cluster-key-file", key_file, "--memory-limit", "4G"]
        if i:
            extra += ["--peer", f"127.0.0.1:{first}"]
        tag = f"{'a' if ARMS[arm] is None else 'b'}{swap}-{i}"
        procs.append(start_peer(f"{tmp}/{tag}", tag, models=model, env=env, extra=extra))
        port = ready_port(procs[-1])
        first = first or port
    return procs, first


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


async def measure(
    args: argparse.Namespace, entries: dict[str, int], key: bytes, lat: dict[str, list[float]]
) -> None:
    """One swap: ``--blocks`` blocks of requests to each arm's cluster, into ``lat``."""
    image = sample_image_path().read_bytes()
    clients = {arm: Client(f"127.0.0.1:{port}", key=key) for arm, port in entries.items()}
    for c in clients.values():
        await c.__aenter__()
    try:
        for arm, c in clients.items():  # every peer seen, then warmed up
            deadline = time.monotonic() + 60
            while sum(1 for p in await c.peers() if p.get("alive")) < args.peers:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{arm}: the peers did not find each other in 60 s")
                await asyncio.sleep(0.3)
            for _ in range(args.warmup):
                await c.infer(image, model=args.model, strategy=args.strategy)
        order = list(ARMS)
        for b in range(args.blocks):
            arm = order[(b + 1) // 2 % 2]  # A B B A A B B A ...
            for _ in range(args.per_block):
                t0 = time.perf_counter()
                await clients[arm].infer(image, model=args.model, strategy=args.strategy)
                lat[arm].append(time.perf_counter() - t0)
    finally:
        for c in clients.values():
            await c.__aexit__(None, None, None)


def summary(args: argparse.Namespace, lat: dict[str, list[float]]) -> dict[str, Any]:
    order = list(ARMS)
    med = {arm: statistics.median(v) * 1e3 for arm, v in lat.items()}
    a, b = order
    return {
        "model": args.model,
        "strategy": args.strategy,
        "peers": args.peers,
        "swaps": args.swaps,
        "requests": {k: len(v) for k, v in lat.items()},
        "median_ms": {k: round(v, 1) for k, v in med.items()},
        "ratio": round(med[a] / med[b], 4),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--peers", type=int, default=3)
    p.add_argument("--swaps", type=int, default=4, help="fresh pairs of clusters (even)")
    p.add_argument("--blocks", type=int, default=4, help="blocks per swap (a multiple of 4)")
    p.add_argument("--per-block", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--strategy", default="edgeci")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeci-arena-bench-") as tmp:
        key = secrets.token_hex(16).encode()
        Path(f"{tmp}/key").write_bytes(key)
        lat: dict[str, list[float]] = {arm: [] for arm in ARMS}
        rss: dict[str, list[float]] = {}
        for swap in range(args.swaps):
            arms = list(ARMS) if swap % 2 == 0 else list(reversed(ARMS))
            procs: dict[str, list[subprocess.Popen[str]]] = {}
            try:
                entries = {}
                for arm in arms:  # this swap's first arm starts first
                    procs[arm], entries[arm] = start_cluster(
                        tmp, arm, args.peers, args.model, f"{tmp}/key", swap
                    )
                asyncio.run(measure(args, dict(sorted(entries.items())), key, lat))
                time.sleep(3.0)  # the peers trim their heaps after 2 s idle
                rss = {arm: [round(vm_rss_mb(pr.pid), 1) for pr in ps] for arm, ps in procs.items()}
            finally:
                stop_processes([pr for ps in procs.values() for pr in ps])
            print(f"swap {swap + 1}/{args.swaps} done", file=sys.stderr)
    out = summary(args, lat)
    out["rss_mb"] = rss
    med = out["median_ms"]
    print(
        f"{args.model} {args.strategy}, {args.peers} loopback peers per arm: median "
        + ", ".join(f"{k} {v} ms" for k, v in med.items())
        + f" (ratio x{out['ratio']}); {out['requests']} requests; peers' VmRSS after, MB: "
        + "; ".join(f"{k} {v}" for k, v in out["rss_mb"].items())
        + f"; load average {out['loadavg_1m']} on {out['cpus']} CPUs"
    )
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

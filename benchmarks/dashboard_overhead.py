"""What an open dashboard costs the cluster: request latency with the dashboard's
polling on and off, in the same run (issue 22).

Starts three ``edgeci-peer`` processes on loopback (the demo's, one thread each, a
fresh cluster key), the first with ``--http 127.0.0.1:0``. A client sends requests
back to back to that entry peer, in blocks; in every other block a poller does what
an open dashboard page does, every ``--poll`` seconds (the page's 2 s by default):
``/api/cluster`` (which asks every peer for its view over the mesh),
``/api/requests``, and a Prometheus scrape of ``/metrics``. Blocks run in the order
off, on, on, off, off, on, ... so that a drift in machine load touches both alike.
Prints the median latency of each and their ratio (JSON with ``--json``).

    python benchmarks/dashboard_overhead.py [--blocks 6] [--per-block 10] \
        [--strategy edgeci] [--poll 2.0] [--json]

Loopback only; every loop is bounded by the counts given; the peers are stopped at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from edgeci_p2p.aio.client import Client
from edgeci_p2p.demo import MODEL, ready, start_peer
from edgeci_p2p.nn.images import sample_image_path
from tests.daemons import stop_processes


async def poll(url: str, every: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """What an open page does (plus a Prometheus scrape), until ``stop``."""
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            for path in ("api/cluster", "api/requests", "metrics"):
                async with s.get(url + path) as r:
                    await r.read()
                    counts[path] = counts.get(path, 0) + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


async def measure(args: argparse.Namespace, entry: str, url: str, key: bytes) -> dict[str, object]:
    image = sample_image_path().read_bytes()
    lat: dict[str, list[float]] = {"off": [], "on": []}
    counts: dict[str, int] = {}
    async with Client(entry, key=key) as c:
        deadline = time.monotonic() + 60
        while True:  # the whole cluster seen (and its links probed) before measuring
            peers = await c.peers()
            if sum(1 for p in peers if p.get("alive")) == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        for _ in range(args.warmup):
            await c.infer(image, model=MODEL, strategy=args.strategy)
        for b in range(args.blocks):
            mode = "on" if b % 4 in (1, 2) else "off"
            stop = asyncio.Event()
            poller = None
            if mode == "on":
                poller = asyncio.create_task(poll(url, args.poll, stop, counts))
            for _ in range(args.per_block):
                t0 = time.perf_counter()
                await c.infer(image, model=MODEL, strategy=args.strategy)
                lat[mode].append(time.perf_counter() - t0)
            stop.set()
            if poller is not None:
                await poller
    off, on = statistics.median(lat["off"]), statistics.median(lat["on"])
    return {
        "strategy": args.strategy,
        "requests": {k: len(v) for k, v in lat.items()},
        "median_ms": {"off": round(off * 1e3, 1), "on": round(on * 1e3, 1)},
        "ratio_on_off": round(on / off, 4),
        "polls": counts,
        "poll_every_s": args.poll,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=8, help="blocks of requests (a multiple of 4)")
    p.add_argument("--per-block", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--strategy", default="edgeci")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between the page's polls")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeci-dash-bench-") as tmp:
        key = secrets.token_hex(16).encode()
        Path(f"{tmp}/key").write_bytes(key)
        procs = []
        try:
            for i in range(3):
                extra = ["--cluster-key-file", f"{tmp}/key"]
                if i == 0:
                    extra += ["--http", "127.0.0.1:0"]
                procs.append(start_peer(f"{tmp}/p{i}", f"bench-{i}", extra=extra))
            started = [ready(pr) for pr in procs]
            url = started[0][1]
            assert url is not None, "the entry peer printed no dashboard address"
            out = asyncio.run(measure(args, f"127.0.0.1:{started[0][0]}", url, key))
        finally:
            stop_processes(procs)
    if args.json:
        print(json.dumps(out))
    else:
        m = out["median_ms"]
        assert isinstance(m, dict)
        print(
            f"{args.strategy}, 3 loopback peers: median {m['off']} ms without the dashboard, "
            f"{m['on']} ms with it open and polling every {args.poll:g} s "
            f"(x{out['ratio_on_off']}); {out['requests']} requests, polls {out['polls']}, "
            f"load average {out['loadavg_1m']} on {out['cpus']} CPUs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

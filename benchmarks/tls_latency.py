"""Median request latency with TLS against ``--plaintext``, in the same run.

Two in-process clusters of ``--peers`` daemons on loopback (both with a cluster key;
one on TLS, the other ``--plaintext``) answer the same image; requests alternate
between them, one at a time, so that a shared machine's load hits both alike.
Target: the TLS median within 5% of the plaintext one.

    .venv/bin/python benchmarks/tls_latency.py [--requests N] [--peers N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from edgeci_p2p.aio.client import Client
from edgeci_p2p.aio.config import PeerConfig
from edgeci_p2p.aio.daemon import PeerDaemon
from edgeci_p2p.nn.images import sample_image_path

KEY = b"benchmark cluster key 0123456789"


async def start(n: int, plaintext: bool) -> list[PeerDaemon]:
    daemons: list[PeerDaemon] = []
    for i in range(n):
        peers = [("127.0.0.1", daemons[0].port)] if daemons else []
        cfg = PeerConfig(
            host="127.0.0.1", port=0, no_mdns=True, models=["resnet34"], peers=peers,
            cluster_key=KEY, plaintext=plaintext, host_id=f"bench-{plaintext}-{i}",
        )  # fmt: skip
        d = PeerDaemon(cfg)
        await d.start()
        daemons.append(d)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(len(d.parts.mesh.conns) == n - 1 for d in daemons):
            break
        await asyncio.sleep(0.05)
    return daemons


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    image = sample_image_path().read_bytes()
    tls, plain = await start(args.peers, False), await start(args.peers, True)
    times: dict[str, list[float]] = {"tls": [], "plaintext": []}
    try:
        async with (
            Client(f"127.0.0.1:{tls[0].port}", key=KEY) as ct,
            Client(f"127.0.0.1:{plain[0].port}", key=KEY, plaintext=True) as cp,
        ):
            for c in (ct, cp):  # warm-up: plans cached, links probed
                for _ in range(3):
                    await c.infer(image, model="resnet34", strategy=args.strategy)
            for i in range(2 * args.requests):
                name, c = ("tls", ct) if i % 2 == 0 else ("plaintext", cp)
                t0 = time.perf_counter()
                await c.infer(image, model="resnet34", strategy=args.strategy)
                times[name].append(time.perf_counter() - t0)
    finally:
        for d in tls + plain:
            await d.stop()
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {
        "requests_each": args.requests,
        "peers": args.peers,
        "strategy": args.strategy,
        "median_ms_tls": round(med["tls"], 2),
        "median_ms_plaintext": round(med["plaintext"], 2),
        "tls_over_plaintext": round(med["tls"] / med["plaintext"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="requests to each cluster")
    ap.add_argument("--peers", type=int, default=2)
    ap.add_argument("--strategy", default="edgeci")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['peers']} peers per cluster, {r['requests_each']} requests each, interleaved")
    print(f"  median TLS        {r['median_ms_tls']:8.2f} ms")
    print(f"  median plaintext  {r['median_ms_plaintext']:8.2f} ms")
    print(f"  TLS / plaintext   {r['tls_over_plaintext']:.4f} (target <= 1.05)")


if __name__ == "__main__":
    main()

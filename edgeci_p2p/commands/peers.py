"""``edgeci peers``: the cluster as one peer sees it, itself included."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("peers", help="list the cluster's peers")
    p.add_argument("--peer", required=True, metavar="HOST:PORT", help="any peer of the cluster")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeci_p2p.aio.client import Client

    async def go() -> list[dict[str, Any]]:
        async with Client(args.peer) as c:
            return await c.peers()

    peers = asyncio.run(go())
    if args.json:
        print(json.dumps(peers))
        return 0
    print(
        f"{'id':<17} {'name':<14} {'address':<22} {'alive':<5} {'GFLOP/s':>8} "
        f"{'backlog s':>9} {'heartbeat s':>11}  models"
    )
    for p in peers:
        hb = p.get("last_heartbeat_s")
        print(
            f"{p['id']:<17} {p.get('name', ''):<14} {p['address']:<22} "
            f"{'yes' if p.get('alive') else 'no':<5} {p.get('speed_gflops', 0):>8} "
            f"{p.get('backlog_s', 0):>9} {'-' if hb is None else hb:>11}  "
            + ",".join(sorted(p.get("models", {})))
        )
    return 0

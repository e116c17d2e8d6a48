"""``edgeci peers``: the cluster as one peer sees it, itself included."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("peers", help="list the cluster's peers")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--peer", metavar="HOST:PORT", help="any peer of the cluster")
    where.add_argument(
        "--mdns-interface",
        action="append",
        metavar="ADDR",
        help="find a peer by browsing mDNS on this interface address (repeatable)",
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
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeci_p2p.aio.client import Client, read_key

    async def go() -> list[dict[str, Any]]:
        address = args.peer
        if address is None:
            from edgeci_p2p.aio.discovery import browse

            found = await browse(args.mdns_interface)
            if not found:
                raise ConnectionError(
                    f"no edgeci peer answered mDNS on {', '.join(args.mdns_interface)}"
                )
            address = f"{found[0].host}:{found[0].port}"
        key = read_key(args.cluster_key_file) if args.cluster_key_file else None
        async with Client(address, key=key, plaintext=args.plaintext) as c:
            return await c.peers()

    peers = asyncio.run(go())
    if args.json:
        print(json.dumps(peers))
        return 0
    print(
        f"{'id':<17} {'name':<14} {'address':<22} {'alive':<5} {'GFLOP/s':>8} "
        f"{'backlog s':>9} {'heartbeat s':>11} {'RSS MB':>7}  models (weights held)"
    )
    # A peer's speed is known from its bids: '-' until it has bid in an auction here.
    for p in peers:
        hb = p.get("last_heartbeat_s")
        rss = p.get("rss_mb")
        print(
            f"{p['id']:<17} {p.get('name', ''):<14} {p['address']:<22} "
            f"{'yes' if p.get('alive') else 'no':<5} {p.get('speed_gflops') or '-':>8} "
            f"{p.get('backlog_s', 0):>9} {'-' if hb is None else hb:>11} "
            f"{'-' if rss is None else rss:>7}  " + models_held(p)
        )
    return 0


def models_held(peer: dict[str, Any]) -> str:
    """``vgg16 (features+head), resnet34 (features)``: each model and the weights the
    peer holds of it (as it said in its last bid; nothing when it never bid here)."""
    holds = peer.get("holds") or {}
    out = []
    for m in sorted(peer.get("models", {})):
        h = holds.get(m)
        out.append(f"{m} ({'+'.join(h)})" if h else m)
    return ", ".join(out)

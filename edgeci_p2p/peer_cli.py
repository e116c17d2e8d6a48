"""``edgeci-peer``: run one peer of the cluster on this device."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgeci_p2p.aio.client import parse_address
from edgeci_p2p.meminfo import one_malloc_arena, parse_size

if TYPE_CHECKING:
    from edgeci_p2p.aio.config import PeerConfig
from edgeci_p2p.aio.config import parse_http
from edgeci_p2p.auction.aside import PATIENCE_S


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeci-peer", description="Run an edgeci-p2p peer: serve and share CNN inference."
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=7420, help="TCP port (default 7420; 0 = any)")
    p.add_argument("--name", default="", help="human-readable peer name")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="directory holding this peer's key pair and certificate (its node id is made "
        "from the key; made there on first start)",
    )
    p.add_argument(
        "--mdns-interface",
        action="append",
        default=[],
        metavar="ADDR",
        help="announce/browse mDNS only on this interface address (repeatable)",
    )
    p.add_argument("--no-mdns", action="store_true", help="no mDNS; use --peer addresses only")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="static peer address (repeatable), for networks that block multicast",
    )
    p.add_argument("--cluster-key-file", type=Path, help="file with the shared cluster key")
    p.add_argument(
        "--allow-peers",
        type=Path,
        metavar="FILE",
        help="let in only peers whose node ids this file lists, one per line "
        "('edgeci peers' shows each peer's id)",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS: connections in clear, for benchmarks and diagnosis only; every peer "
        "and client of the cluster must be given it too",
    )
    p.add_argument(
        "--max-handshakes",
        type=int,
        default=32,
        help="inbound connections in their handshake at once (default 32; more wait)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for tile work")
    p.add_argument("--models", default="vgg16,resnet34", help="comma-separated models to serve")
    p.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="bytes this peer may spend on model weights and work (e.g. 300M, 1.5G); by "
        "default the room under its cgroup memory limit, else the machine's available "
        "memory, less a margin. Feature layers load at start, a head only where work needs "
        "it; work that would go past this is declined ('memory')",
    )
    p.add_argument(
        "--weights-idle",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="drop weights loaded on demand (a head) after this long unused",
    )
    p.add_argument(
        "--links",
        choices=["shared", "switched"],
        default="shared",
        help="how this node plans the network when it is the auctioneer: one shared medium "
        "(a Wi-Fi cell, the default) or switched links, each peer's its own (Ethernet)",
    )
    p.add_argument(
        "--link-mbit",
        type=float,
        help="plan every link at this rate (Mbit/s) instead of fitting it from served tiles "
        "(for links of a known, fixed rate)",
    )
    p.add_argument(
        "--no-speed-calibration",
        action="store_true",
        help="bid with the start-up profile as measured, whatever the served work shows "
        "(by default bids follow how much slower or faster than profiled this peer's "
        "tiles run, once that differs by more than 30%%)",
    )
    p.add_argument(
        "--no-fold",
        action="store_true",
        help="never fold VGG's fc1 into the last strips of this peer's plans, and keep no "
        "second copy of fc1 laid out for it (411 MB for VGG-16; by default a plan folds "
        "where that is predicted sooner)",
    )
    p.add_argument(
        "--plan-here",
        action="store_true",
        help="make this peer's background plans in its own planning child (by default "
        "they go to another peer: the fastest one the plan at hand leaves out, else the "
        "fastest one it uses, which holds them while it serves work; they come back here "
        "only when that peer cannot make them)",
    )
    p.add_argument(
        "--no-plan-aside",
        action="store_true",
        help="plan for a peer's new speed figures in a thread of this daemon, beside the "
        "requests it serves (by default a child process at the lowest CPU priority plans "
        "them, in the time this peer's requests leave idle)",
    )
    p.add_argument(
        "--plan-patience",
        type=float,
        default=PATIENCE_S,
        metavar="SECONDS",
        help="how long a new plan for moved speed figures waits for this daemon to fall "
        "idle before the planning child makes it anyway, beside the requests "
        "(default %(default)g)",
    )
    p.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        metavar="N",
        help="niceness of the compute worker thread (Linux; 0-19): above 0 the event "
        "loop, which sends the rows neighbours wait for, runs first whenever it has work "
        "(default %(default)s)",
    )
    p.add_argument(
        "--no-piece-cost",
        action="store_true",
        help="do not learn or bid a fixed cost per piece of work (by default a peer fits "
        "measured = slowdown x profile + a fixed cost over the pieces it serves, and bids "
        "both, so that plans price every stage it runs)",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave start-up's objects to Python's collector (by default they are frozen "
        "once the peer is ready: a full collection over them stalls every thread of the "
        "peer for ~0.1 s of CPU); for comparison",
    )
    p.add_argument(
        "--no-zero-suppression",
        action="store_true",
        help="send every feature map whole (by default maps after a ReLU travel as a bitmask "
        "plus their non-zero values: lossless, about half the bytes; off can pay only on "
        "links much faster than this CPU)",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="torchvision weights file for a model (repeatable)",
    )
    p.add_argument(
        "--host-id",
        help="the machine id this peer's bids carry (default: a hash of this machine's id): "
        "peers with one id share its cores and are planned as one pool of CPU; give each "
        "emulated peer its own to plan them as separate machines",
    )
    p.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="serve Prometheus /metrics, a JSON API (/api/cluster, /api/requests) and a "
        "dashboard page on this address (off by default; loopback when only a port is "
        "given; beyond loopback with a cluster key, a token derived from the key is "
        "required, printed in the dashboard's address)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> PeerConfig:
    """The peer configuration that parsed ``edgeci-peer`` flags describe (reads the key file).

    Raises ValueError or OSError on a bad flag value or an unreadable key file."""
    from edgeci_p2p.aio.config import PeerConfig, read_allow_list

    weights = {}
    for item in args.weights:
        model, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--weights {item!r}: expected MODEL=PATH")
        weights[model] = path
    if not 0 <= args.worker_nice <= 19:
        raise ValueError(f"--worker-nice {args.worker_nice}: 0-19 (a thread only lowers itself)")
    if args.plan_patience < 0:
        raise ValueError(f"--plan-patience {args.plan_patience}: seconds, at least 0")
    key = args.cluster_key_file.read_bytes().strip() if args.cluster_key_file else None
    return PeerConfig(
        host=args.host,
        port=args.port,
        name=args.name,
        state_dir=args.state_dir,
        mdns_interfaces=args.mdns_interface,
        no_mdns=args.no_mdns,
        peers=[parse_address(a) for a in args.peer],
        cluster_key=key,
        threads=args.threads,
        models=[m for m in args.models.split(",") if m],
        weights=weights,
        shared_medium=args.links == "shared",
        link_bandwidth=None if args.link_mbit is None else args.link_mbit * 1e6 / 8,
        zero_suppression=not args.no_zero_suppression,
        calibrate_speed=not args.no_speed_calibration,
        learn_piece_cost=not args.no_piece_cost,
        plan_aside=not args.no_plan_aside,
        worker_nice=args.worker_nice,
        plan_patience_s=args.plan_patience,
        plan_on_peers=not args.plan_here,
        fold=not args.no_fold,
        memory_limit=None if args.memory_limit is None else parse_size(args.memory_limit),
        weights_idle_s=args.weights_idle,
        count_resident=True,  # this process is this one peer
        host_id=args.host_id,
        http=None if args.http is None else parse_http(args.http),
        plaintext=args.plaintext,
        allow_peers=read_allow_list(args.allow_peers) if args.allow_peers else None,
        max_handshakes=args.max_handshakes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_limit is not None:
        # A person bounded this peer's memory: a compact heap for ~2% of latency
        # (meminfo.one_malloc_arena); before torch and the daemon start threads.
        one_malloc_arena()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    from edgeci_p2p.aio.daemon import run_forever
    from edgeci_p2p.core.membership import DuplicateNodeError

    try:
        run_forever(config_from_args(args), freeze_gc=not args.no_gc_freeze)
    except (ValueError, OSError, DuplicateNodeError) as e:
        print(f"edgeci-peer: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgeci doctor``: why peers do not see each other, each finding with its fix."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

MARKS = {"ok": "ok", "info": "--", "warn": "WARN", "fail": "FAIL"}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor", help="check discovery and the peers: findings, each with its fix"
    )
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer to check besides those mDNS finds (repeatable, or comma-separated)",
    )
    p.add_argument(
        "--mdns-interface",
        action="append",
        default=[],
        metavar="ADDR",
        help="as edgeci-peer's: the interface address(es) mDNS uses (default: those a peer "
        "would choose, shown first)",
    )
    p.add_argument(
        "--host", default="0.0.0.0", help="as edgeci-peer's --host (what the peer listens on)"
    )
    p.add_argument("--no-mdns", action="store_true", help="check only the --peer addresses")
    p.add_argument(
        "--browse-seconds",
        type=float,
        default=3.0,
        metavar="N",
        help="how long the mDNS browse listens (default 3)",
    )
    p.add_argument(
        "--cluster-key-file",
        type=Path,
        help="file with the shared cluster key, to try the handshake with",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="handshake without TLS (only against peers started with --plaintext)",
    )
    p.add_argument("--json", action="store_true", help="the findings as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeci_p2p.aio.client import parse_addresses, read_key
    from edgeci_p2p.aio.doctor import DoctorOptions, diagnose
    from edgeci_p2p.policy.doctor import exit_code

    opts = DoctorOptions(
        peers=parse_addresses(args.peer),
        mdns_interfaces=list(args.mdns_interface),
        host=args.host,
        no_mdns=args.no_mdns,
        key=read_key(args.cluster_key_file) if args.cluster_key_file else None,
        browse_seconds=args.browse_seconds,
        plaintext=args.plaintext,
    )
    findings = asyncio.run(diagnose(opts))
    code = exit_code(findings)
    if args.json:
        print(json.dumps({"ok": code == 0, "findings": [f.to_dict() for f in findings]}))
        return code
    for f in findings:
        print(f"[{MARKS[f.status]:>4}] {f.check:<12} {f.subject}: {f.summary}")
        if f.fix:
            print(f"{'':20}fix: {f.fix}")
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    print(f"{len(findings)} findings: {fails} failing, {warns} warnings")
    return code

"""What the runtime's event loops cost per request with no emulation around them.

``benchmarks/cluster.py`` reports each peer's loop and compute CPU per request on the
emulated cluster, where every peer runs under a CPU quota and behind a shaped link. A
quota changes what a loop costs (a capped peer's caches are cold after each CFS pause,
and data trickling through a shaped link wakes a loop more often), so this runs the
same kind of cluster bare: ``--peers`` uncapped ``edgeci-peer`` processes on loopback,
static peers (no mDNS), each a machine of its own (``--host-id``), one torch thread
each, sharing the machine's cores. After ``--warmup`` requests it sends ``--k``
requests of each strategy back to back and charges each peer's per-thread CPU
(``benchmarks/peer_cpu.py``: loop, compute worker, other threads, children) to them.

    python benchmarks/loop_cpu.py [--peers 4] [--k 10] [--model vgg16] \\
        [--strategies edgeci-halo,local] [--plaintext] [--json]

The figures are CPU time, not latency: the peers share the cores, so latencies say
little, and the CPU a request costs is what the quotas of a real cluster would pay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_cpu import KINDS, charge, read_peers

from edgeci_p2p.aio.client import Client
from edgeci_p2p.demo import BIN, ready_port, stop_peers
from edgeci_p2p.nn.images import sample_image_path


def drain(proc: subprocess.Popen[str]) -> None:
    """Read what a peer prints after its ready line (to stderr), so that a full pipe
    never blocks it."""
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", file=sys.stderr)


def start(
    n: int, model: str, plaintext: bool, state: Path
) -> tuple[list[subprocess.Popen[str]], list[int]]:
    """``n`` peers, each told the addresses of those before it (gossip does the rest)."""
    procs: list[subprocess.Popen[str]] = []
    ports: list[int] = []
    for i in range(n):
        argv = [str(BIN / "edgeci-peer"), "--host", "127.0.0.1", "--port", "0", "--no-mdns"]
        argv += [x for p in ports for x in ("--peer", f"127.0.0.1:{p}")]
        argv += ["--state-dir", str(state / f"p{i}"), "--name", f"loop{i}", "--models", model]
        argv += ["--threads", "1", "--host-id", f"loop-cpu-{i}", "--log-level", "warning"]
        argv += ["--plaintext"] if plaintext else []
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
        try:
            ports.append(ready_port(procs[-1]))
        except RuntimeError:
            stop_peers(procs)
            raise
        threading.Thread(target=drain, args=(procs[-1],), daemon=True).start()
        print(f"peer{i} ready on port {ports[-1]}", file=sys.stderr, flush=True)
    return procs, ports


async def measure(args: argparse.Namespace, pids: list[int], port: int) -> dict[str, Any]:
    image = sample_image_path().read_bytes()
    out: dict[str, Any] = {}
    async with Client(f"127.0.0.1:{port}", plaintext=args.plaintext) as c:
        deadline = time.monotonic() + 120
        while sum(p["alive"] for p in await c.peers()) < args.peers:
            if time.monotonic() > deadline:
                raise SystemExit(f"the entry peer did not see {args.peers} peers in 120 s")
            await asyncio.sleep(0.5)
        for strategy in args.strategies.split(","):
            for _ in range(args.warmup):
                await c.infer(image, model=args.model, strategy=strategy)
            before = read_peers(pids)
            t0 = time.perf_counter()
            for _ in range(args.k):
                await c.infer(image, model=args.model, strategy=strategy)
            wall = (time.perf_counter() - t0) / args.k
            per_peer = charge(before, read_peers(pids), args.k)
            out[strategy] = {"mean_ms": round(wall * 1e3, 1), "cpu_ms": per_peer}
            print(f"{strategy}: {args.k} requests measured", file=sys.stderr, flush=True)
    return out


def table(found: dict[str, Any]) -> str:
    lines = ["strategy      peer  " + "  ".join(f"{k:>8}" for k in KINDS)]
    for strategy, got in found.items():
        for i, peer in enumerate(got["cpu_ms"]):
            cells = "  ".join(f"{peer[k]:8.1f}" for k in KINDS)
            lines.append(f"{strategy:<13} {i:>4}  {cells}")
        total = {k: sum(p[k] for p in got["cpu_ms"]) for k in KINDS}
        cells = "  ".join(f"{total[k]:8.1f}" for k in KINDS)
        lines.append(f"{strategy:<13} {'all':>4}  {cells}   (ms of CPU per request)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--k", type=int, default=10, help="measured requests per strategy")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured requests first")
    p.add_argument("--model", default="vgg16")
    p.add_argument("--strategies", default="edgeci-halo,local")
    p.add_argument("--plaintext", action="store_true", help="no TLS between the peers")
    p.add_argument("--json", action="store_true", help="last line: the figures as JSON")
    args = p.parse_args()
    if args.peers < 1 or args.k < 1:
        p.error("--peers and --k must be at least 1")
    with tempfile.TemporaryDirectory(prefix="edgeci-loop-cpu-") as tmp:
        procs, ports = start(args.peers, args.model, args.plaintext, Path(tmp))
        try:
            found = asyncio.run(measure(args, [pr.pid for pr in procs], ports[0]))
        finally:
            stop_peers(procs)
    print(table(found))
    if args.json:
        print(json.dumps(found))


if __name__ == "__main__":
    main()

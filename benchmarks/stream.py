"""Stream throughput: frames per second and p50/p95 latency for 1, 2 and 4 frames in flight,
with 1 peer and with 3 peers on loopback (each peer its own `edgeci-peer` process with one
torch thread, so each has its own GIL and torch pool), through the camera pipeline's
streaming client (one connection, frames in flight matched by request id).

    .venv/bin/python benchmarks/stream.py [--frames 20] [--in-flight 1,2,4] [--peers 1,3]
        [--model resnet34] [--strategy edgeci] [--encoding jpeg] [--repeat 1] [--json]
        [--peer-command "CMD ..."]

The first 2K frames of each run warm the pipeline up and are not counted. Targets (issue
9): with 3 peers, fps at 4 in flight >= 1.2x fps at 1 in flight, and >= 1.3x the fps of
1 peer alone at 4 in flight. ``cpu`` is each peer process's CPU seconds (user + system,
from /proc: tiles, planning, messaging, everything) over the run's wall time, and
``client`` the benchmark process's own; with 3 one-thread peers on a 2-core machine the
fractions cannot sum past 2, and other users of the machine take their share too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from edgeci_p2p.aio.client import Client
from edgeci_p2p.stream.pipeline import FrameResult, StreamConfig, stream
from edgeci_p2p.stream.sources import SyntheticCamera
from edgeci_p2p.stream.stats import percentile

PEER_BIN = Path(sys.executable).with_name("edgeci-peer")


class Prerendered:
    """The synthetic camera's frames rendered up front and cycled, so the client's own CPU
    use per frame is only the encoding (the peers share the same 2 cores)."""

    def __init__(self, count: int = 30, size: tuple[int, int] = (320, 240)) -> None:
        cam = SyntheticCamera(size=size)
        self.frames = [cam.frame(3 * i) for i in range(count)]
        self.index = 0
        self.description = f"{count} prerendered synthetic frames"

    def read(self) -> Image.Image | None:
        img = self.frames[self.index % len(self.frames)]
        self.index += 1
        return img

    def close(self) -> None:
        pass


@dataclass
class Measurement:
    peers: int
    in_flight: int
    frames: int
    fps: float
    p50_ms: float
    p95_ms: float
    cpu: dict[str, float]
    """CPU seconds per peer process (and ``client``) over the run's wall time."""
    nodes_per_frame: float
    """Mean number of peers a frame's plan used."""
    load: float
    """1-minute load average when the run started (other users of the machine)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoopbackCluster:
    """``n`` edgeci-peer processes on 127.0.0.1, the first one the others' static peer."""

    def __init__(
        self, n: int, model: str, workdir: Path, command: Sequence[str] = (str(PEER_BIN),)
    ) -> None:
        self.n, self.model, self.workdir = n, model, workdir
        self.command = list(command)
        self.procs: list[subprocess.Popen[str]] = []
        self.ports: list[int] = []

    def _spawn(self, i: int, seed: int | None) -> int:
        argv = [
            *self.command,
            "--host", "127.0.0.1", "--port", "0", "--no-mdns", "--threads", "1",
            "--models", self.model, "--name", f"p{i}",
            "--state-dir", str(self.workdir / f"p{i}"), "--log-level", "warning",
        ]  # fmt: skip
        if seed is not None:
            argv += ["--peer", f"127.0.0.1:{seed}"]
        log = (self.workdir / f"p{i}.log").open("w")
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
        self.procs.append(proc)
        port: list[int] = []

        def read_ready() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "ready on port" in line:
                    port.append(int(line.rsplit(" ", 1)[1]))
                    return

        t = threading.Thread(target=read_ready, daemon=True)
        t.start()
        t.join(120)
        if not port:
            raise RuntimeError(f"peer p{i} did not start; see {self.workdir / f'p{i}.log'}")
        return port[0]

    async def start(self) -> str:
        self.ports.append(self._spawn(0, None))
        for i in range(1, self.n):
            self.ports.append(self._spawn(i, self.ports[0]))
        address = f"127.0.0.1:{self.ports[0]}"
        deadline = time.monotonic() + 60
        async with Client(address) as c:
            while True:
                peers = await c.peers()
                if len(peers) == self.n and all(p["alive"] for p in peers):
                    return address
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(peers)} of {self.n} peers joined")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def measure(
    address: str, peers: int, in_flight: int, args: argparse.Namespace, pids: dict[str, int]
) -> Measurement:
    warm = 2 * in_flight
    config = StreamConfig(
        model=args.model,
        strategy=args.strategy,
        frames=warm + args.frames,
        in_flight=in_flight,
        encoding=args.encoding,
    )
    frames: list[FrameResult] = []
    load = os.getloadavg()[0]
    pids = {**pids, "client": os.getpid()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    async with Client(address) as client:
        await stream(client, Prerendered(), config, lambda f, _: frames.append(f))
    elapsed = time.perf_counter() - t0
    cpu = {name: (cpu_seconds(pid) - cpu0[name]) / elapsed for name, pid in pids.items()}
    counted = [f for f in frames if f.index >= warm]
    wall = max(f.ended for f in counted) - min(f.started for f in counted)
    lat = [1000 * f.latency_s for f in counted]
    used = []
    for f in counted:
        compute = f.result.timing.get("compute", {})
        assert isinstance(compute, dict)
        used.append(len(compute))
    return Measurement(
        peers,
        in_flight,
        len(counted),
        len(counted) / wall,
        percentile(lat, 50),
        percentile(lat, 95),
        {k: round(v, 2) for k, v in cpu.items()},
        statistics.fmean(used),
        load,
    )


async def run_loopback(args: argparse.Namespace) -> list[Measurement]:
    out: list[Measurement] = []
    for n in args.peers:
        with tempfile.TemporaryDirectory(prefix="edgeci-stream-") as tmp:
            cluster = LoopbackCluster(n, args.model, Path(tmp), shlex.split(args.peer_command))
            try:
                address = await cluster.start()
                pids = {f"p{i}": p.pid for i, p in enumerate(cluster.procs)}
                for k in args.in_flight:
                    runs = [await measure(address, n, k, args, pids) for _ in range(args.repeat)]
                    best = sorted(runs, key=lambda m: m.fps)[len(runs) // 2]  # the median run
                    out.append(best)
                    print(row(best), file=sys.stderr, flush=True)
            finally:
                cluster.stop()
    return out


def row(m: Measurement) -> str:
    cpu = " ".join(f"{k}={v:.2f}" for k, v in m.cpu.items())
    return (
        f"{m.peers:>5} {m.in_flight:>9} {m.frames:>6} {m.fps:>7.2f} {m.p50_ms:>8.0f} "
        f"{m.p95_ms:>8.0f} {m.nodes_per_frame:>6.2f} {m.load:>5.2f}  {cpu}"
    )


HEADER = "peers in_flight frames     fps  p50_ms  p95_ms  nodes  load  cpu s / wall s (p0 entry)"


def ratios(ms: Sequence[Measurement], many: int) -> list[str]:
    fps = {(m.peers, m.in_flight): m.fps for m in ms}
    lines = []
    if (many, 4) in fps and (many, 1) in fps:
        r = fps[many, 4] / fps[many, 1]
        lines.append(f"{many} peers, 4 vs 1 in flight: {r:.2f}x (target >= 1.2x)")
    if (many, 4) in fps and (1, 4) in fps:
        r = fps[many, 4] / fps[1, 4]
        lines.append(f"{many} peers vs 1 peer at 4 in flight: {r:.2f}x (target >= 1.3x)")
    return lines


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--frames", type=int, default=20, help="counted frames per run")
    ap.add_argument("--in-flight", type=ints, default=[1, 2, 4])
    ap.add_argument("--peers", type=ints, default=[1, 3])
    ap.add_argument("--model", default="resnet34")
    ap.add_argument("--strategy", default="edgeci")
    ap.add_argument("--encoding", default="jpeg", choices=("jpeg", "png", "tensor"))
    ap.add_argument("--repeat", type=int, default=1, help="runs per point (median fps kept)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    ap.add_argument(
        "--peer-command",
        default=str(PEER_BIN),
        help="how to start a peer (edgeci-peer's flags are appended): to measure a variant",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"# loopback, peers: {args.peer_command}, {args.model}, strategy {args.strategy}, "
        f"{args.encoding} frames, {os.cpu_count()} cores, one torch thread per peer",
        flush=True,
    )
    print(HEADER, file=sys.stderr, flush=True)
    ms = asyncio.run(run_loopback(args))
    print(HEADER)
    for m in ms:
        print(row(m))
    for line in ratios(ms, max(args.peers)):
        print(line)
    if args.json:
        print(json.dumps([asdict(m) for m in ms]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

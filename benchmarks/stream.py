"""Stream throughput: frames per second and p50/p95 latency for 1, 2 and 4 frames in flight,
with 1 peer and with 3 peers on loopback (each peer its own `edgeci-peer` process with one
torch thread, so each has its own GIL and torch pool), through the camera pipeline's
streaming client (one connection, frames in flight matched by request id).

    .venv/bin/python benchmarks/stream.py [--frames 20] [--in-flight 1,2,4] [--peers 1,3]
        [--model resnet34] [--strategy edgeci] [--encoding jpeg] [--repeat 1] [--json]
        [--peer-command "CMD ..."] [--emulated] [--share 0.5] [--rate-mbit 100]

The first 2K frames of each run warm the pipeline up and are not counted. Targets (issue
9): with 3 peers, fps at 4 in flight >= 1.2x fps at 1 in flight, and >= 1.3x the fps of
1 peer alone at 4 in flight.

``--emulated`` (root, with network namespaces, tc and cgroup v1; reuses
benchmarks/emulation.py) repeats the figures on an emulated cluster: every peer in its
own network namespace behind a tbf-shaped link (``--rate-mbit``, default 100) and capped
at ``--share`` of a core (default 0.5, so 3 peers fit in 2 cores with room to spare and
the caps, not the neighbours, set the device speeds); the streaming client runs inside
peer 0's namespace, uncapped (the camera sits on the entry device).

``cpu`` is each peer process's CPU seconds (user + system,
from /proc: tiles, planning, messaging, everything) over the run's wall time, and
``client`` the benchmark process's own; with 3 one-thread peers on a 2-core machine the
fractions cannot sum past 2, and other users of the machine take their share too.
``nodes``: peers a frame's plan used, on average; ``bid+plan``: the auctioneer's mean
milliseconds per frame for the bid round and planning (``timing`` of the answer:
``bid`` + ``plan``, or ``auction`` where the daemon reports the two as one).
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
    decide_ms: float
    """Mean auctioneer time per frame spent on the bid round and planning."""
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
        await wait_for_peers(address, self.n)
        return address

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def wait_for_peers(address: str, n: int, timeout: float = 60.0) -> None:
    """Until the entry peer sees ``n`` alive peers (itself included)."""
    deadline = time.monotonic() + timeout
    async with Client(address) as c:
        while True:
            peers = await c.peers()
            if len(peers) == n and all(p["alive"] for p in peers):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(peers)} of {n} peers joined")
            await asyncio.sleep(0.2)


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
    used, decide = [], []
    for f in counted:
        compute = f.result.timing.get("compute", {})
        assert isinstance(compute, dict)
        used.append(len(compute))
        t = f.result.timing
        decide.append(sum(float(v) for k, v in t.items() if k in ("bid", "plan", "auction")))
    return Measurement(
        peers,
        in_flight,
        len(counted),
        len(counted) / wall,
        percentile(lat, 50),
        percentile(lat, 95),
        {k: round(v, 2) for k, v in cpu.items()},
        statistics.fmean(used),
        1000 * statistics.fmean(decide),
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


EMU_PORT = 7420


def client_main(argv: Sequence[str]) -> int:
    """``stream.py client``: run the measurements against a cluster that is already up (the
    emulated run starts this inside peer 0's namespace) and print one JSON line each."""
    ap = argparse.ArgumentParser(prog="stream.py client")
    ap.add_argument("--address", required=True)
    ap.add_argument("--peers", type=int, required=True)
    ap.add_argument("--pids", default="", help="name=pid,... for the CPU figures")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--in-flight", type=ints, default=[1, 2, 4])
    ap.add_argument("--model", default="resnet34")
    ap.add_argument("--strategy", default="edgeci")
    ap.add_argument("--encoding", default="jpeg")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    pids = {k: int(v) for k, _, v in (x.partition("=") for x in a.pids.split(",") if x)}

    async def go() -> None:
        await wait_for_peers(a.address, a.peers, 120)
        for k in a.in_flight:
            runs = [await measure(a.address, a.peers, k, a, pids) for _ in range(a.repeat)]
            best = sorted(runs, key=lambda m: m.fps)[len(runs) // 2]
            print(json.dumps(asdict(best)), flush=True)

    asyncio.run(go())
    return 0


def run_emulated(args: argparse.Namespace) -> list[Measurement]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from emulation import Emulation, SystemHost, can_emulate, make_layout
    except ImportError as e:
        raise RuntimeError(f"benchmarks/emulation.py is not importable ({e})") from None

    ok, why = can_emulate()
    if not ok:
        raise RuntimeError(f"cannot emulate here: {why}")
    out: list[Measurement] = []
    for n in args.peers:
        layout = make_layout([args.share] * n, args.rate_mbit, prefix="edgeci-stream")
        emu = Emulation(layout, SystemHost())
        with tempfile.TemporaryDirectory(prefix="edgeci-stream-emu-") as tmp, emu.running():
            work = Path(tmp)
            entry = f"{layout.peers[0].address}:{EMU_PORT}"
            logs, pids = [], {}
            for slot in layout.peers:
                i = slot.index
                argv = [
                    sys.executable, "-m", "edgeci_p2p.peer_cli",
                    "--host", slot.address, "--port", str(EMU_PORT), "--no-mdns",
                    "--threads", "1", "--models", args.model, "--name", f"p{i}",
                    "--state-dir", str(work / f"p{i}"), "--log-level", "warning",
                ]  # fmt: skip
                if i:
                    argv += ["--peer", entry]
                env = dict(os.environ)
                # Each peer profiles itself under its own CPU cap: its own profile cache.
                env.update(EDGECI_CACHE_DIR=str(work / f"cache{i}"), OMP_NUM_THREADS="1")
                logs.append(work / f"p{i}.log")
                pids[f"p{i}"] = emu.spawn(slot, argv, env, str(logs[-1]))
            deadline = time.monotonic() + 180
            while not all("ready on port" in log.read_text(errors="replace") for log in logs):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"emulated peers did not start; logs in {work}")
                time.sleep(0.5)
            client = [
                "ip", "netns", "exec", layout.peers[0].namespace,
                sys.executable, __file__, "client", "--address", entry, "--peers", str(n),
                "--pids", ",".join(f"{k}={v}" for k, v in pids.items()),
                "--frames", str(args.frames),
                "--in-flight", ",".join(map(str, args.in_flight)),
                "--model", args.model, "--strategy", args.strategy,
                "--encoding", args.encoding, "--repeat", str(args.repeat),
            ]  # fmt: skip
            res = subprocess.run(client, capture_output=True, text=True, timeout=1800)
            if res.returncode != 0:
                raise RuntimeError(f"emulated client failed: {res.stderr[-2000:]}")
            for line in res.stdout.splitlines():
                if line.startswith("{"):
                    m = Measurement(**json.loads(line))
                    out.append(m)
                    print(row(m), file=sys.stderr, flush=True)
    return out


def row(m: Measurement) -> str:
    cpu = " ".join(f"{k}={v:.2f}" for k, v in m.cpu.items())
    return (
        f"{m.peers:>5} {m.in_flight:>9} {m.frames:>6} {m.fps:>7.2f} {m.p50_ms:>8.0f} "
        f"{m.p95_ms:>8.0f} {m.nodes_per_frame:>6.2f} {m.decide_ms:>7.0f} {m.load:>5.2f}  {cpu}"
    )


HEADER = (
    "peers in_flight frames     fps  p50_ms  p95_ms  nodes  bid+plan  load  "
    "cpu s / wall s (p0 entry)"
)


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
    ap.add_argument("--emulated", action="store_true", help="also the emulated cluster (root)")
    ap.add_argument("--skip-loopback", action="store_true", help="only the emulated cluster")
    ap.add_argument("--share", type=float, default=0.5, help="emulated: cores per peer")
    ap.add_argument("--rate-mbit", type=float, default=100.0, help="emulated: link rate")
    ap.add_argument(
        "--peer-command",
        default=str(PEER_BIN),
        help="how to start a peer (edgeci-peer's flags are appended): to measure a variant",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    args = parse_args(argv)
    print(
        f"# loopback, peers: {args.peer_command}, {args.model}, strategy {args.strategy}, "
        f"{args.encoding} frames, {os.cpu_count()} cores, one torch thread per peer",
        flush=True,
    )
    print(HEADER, file=sys.stderr, flush=True)
    ms = [] if args.skip_loopback else asyncio.run(run_loopback(args))
    if ms:
        print(HEADER)
        for m in ms:
            print(row(m))
        for line in ratios(ms, max(args.peers)):
            print(line)
    if args.emulated:
        print(
            f"# emulated: {args.share:g} core and a {args.rate_mbit:g} mbit link per peer, "
            "client in peer 0's namespace",
            flush=True,
        )
        try:
            em = run_emulated(args)
        except RuntimeError as e:
            print(f"emulated cluster not measured: {e}")
        else:
            print(HEADER)
            for m in em:
                print(row(m))
            for line in ratios(em, max(args.peers)):
                print(line)
            ms += em
    if args.json:
        print(json.dumps([asdict(m) for m in ms]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

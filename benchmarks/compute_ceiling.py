"""What the emulated cluster's CPUs allow, with no network at all: the efficiency ceiling.

Parallel efficiency on ``emulated-4`` is measured against an ideal speed-up of 2.5
(quotas 0.6 + 0.4 + 0.3 + 0.2 over the best 0.6). That ideal assumes four capped
peers compute side by side as fast as each does alone. This benchmark measures
whether they can on this machine (two cores, CFS quotas over 100 ms periods): the
same cgroups as ``benchmarks/cluster.py``, one worker process per peer, one torch
thread each, and no sockets. Every "request", the four workers start at once on a
row strip of the input sized by their quota (VGG-16's convolutions are linear in
the rows), the 0.6-core worker also runs the classifier, and the request ends when
the last one finishes. That is perfect strip parallelism: no halo recompute, no
transfer, no planning. The other modes add what synchronisation costs: ``pool``
and ``conv``, no worker starts a layer before every worker has finished the pool
(or convolution) before it; ``halo``, before its neighbours (the strips above and
below) have finished the convolution before it, which is all a halo exchange needs.
That is where one peer's CFS pause stalls the others.

    sudo .venv/bin/python benchmarks/compute_ceiling.py [--k 20] [--model vgg16]

Prints per mode the median latency, speed-up over the 0.6-core worker alone and the
efficiency against the ideal 2.5, and the last line as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import selectors
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from emulation import Emulation, Layout, SystemHost, can_emulate, make_layout  # noqa: E402

SHARES = (0.6, 0.4, 0.3, 0.2)
IMAGE = 224
MODES = ("free", "pool", "conv", "halo")


# ---- worker (runs inside one cgroup) -------------------------------------------------


def worker(model_name: str, rows: int, classifier: bool) -> None:
    import torch

    from edgeci_p2p.nn.models import load_model

    torch.set_num_threads(1)
    model = load_model(model_name, use_hub_cache=False).module
    feats = list(model.features) if hasattr(model, "features") else None
    if feats is None:
        raise SystemExit(f"{model_name}: only models with .features (VGG) are supported")
    # Barrier points per mode: after every conv (a halo exchange per layer) or after
    # every pool (one per fused block).
    conv_ends = {i for i, m in enumerate(feats) if isinstance(m, torch.nn.ReLU)}
    pool_ends = {i for i, m in enumerate(feats) if isinstance(m, torch.nn.MaxPool2d)}
    x0 = torch.randn(1, 3, rows, IMAGE)
    head = torch.randn(1, 512, 7, 7)
    out: IO[str] = sys.stdout

    def step(mode: str) -> None:
        ends = conv_ends if mode == "conv" else pool_ends if mode == "pool" else set()
        with torch.inference_mode():
            x = x0
            for i, m in enumerate(feats):
                x = m(x)
                if i in ends:
                    out.write("b\n")
                    out.flush()
                    if sys.stdin.readline().strip() != "go":
                        raise SystemExit(0)
            if classifier:
                model.classifier(torch.flatten(model.avgpool(head), 1))

    step("free")  # warm-up: allocator, kernels
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            return
        t0 = time.perf_counter()
        step(cmd)
        out.write(f"done {1000 * (time.perf_counter() - t0):.2f}\n")
        out.flush()


# ---- parent --------------------------------------------------------------------------


class Worker:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin, self.stdout = proc.stdin, proc.stdout

    def send(self, line: str) -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()

    def recv(self) -> str:
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"worker pid {self.proc.pid} exited (rc {self.proc.poll()})")
        return line.strip()


def strip_rows(shares: Sequence[float]) -> list[int]:
    # Rows by quota; at least 32 so that five 2x2 pools leave a row.
    total = sum(shares)
    return [max(32, math.ceil(IMAGE * s / total)) for s in shares]


def released(mode: str, reached: Sequence[int], waiting: Sequence[bool]) -> list[int]:
    """The waiting workers that may start their next layer: in ``halo`` mode once the
    strips above and below have finished as many layers (a worker that is done has
    finished them all), otherwise once every worker has."""
    n = len(reached)
    out = []
    for i in range(n):
        gate = [j for j in (i - 1, i + 1) if 0 <= j < n] if mode == "halo" else range(n)
        if waiting[i] and all(reached[j] >= reached[i] for j in gate):
            out.append(i)
    return out


def one_request(workers: Sequence[Worker], mode: str) -> tuple[float, list[float]]:
    """All workers start at once; returns the wall time until the last is done and
    each worker's own time. A worker that reports a barrier (it finished layer L)
    waits until it may go on: in ``conv`` and ``pool`` mode once every worker has
    finished layer L, in ``halo`` mode once its neighbours (the strips above and
    below) have, which is all a halo exchange needs."""
    t0 = time.perf_counter()
    wire = "conv" if mode == "halo" else mode
    for w in workers:
        w.send(wire)
    n = len(workers)
    reached = [0] * n  # barriers passed (layers finished) per worker
    waiting = [False] * n
    done: dict[int, float] = {}
    sel = selectors.DefaultSelector()
    for i, w in enumerate(workers):
        sel.register(w.stdout, selectors.EVENT_READ, i)
    try:
        while len(done) < n:
            for key, _ in sel.select():
                i = key.data
                r = workers[i].recv()
                if r.startswith("done"):
                    done[i] = float(r.split()[1])
                    reached[i] = 1 << 30
                    sel.unregister(key.fileobj)
                else:
                    reached[i] += 1
                    waiting[i] = True
            for i in released(mode, reached, waiting):
                waiting[i] = False
                workers[i].send("go")
    finally:
        sel.close()
    wall = 1000 * (time.perf_counter() - t0)
    return wall, [done[i] for i in range(n)]


def _measure(
    args: argparse.Namespace,
    layout: Layout,
    rows: Sequence[int],
    emu: Emulation,
    workers: list[Worker],
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    # Peer 0's cgroup holds two workers: the whole model alone (the best single
    # device, never run at the same time as the strips) and its strip.
    jobs = [(IMAGE, True), *[(r, i == 0) for i, r in enumerate(rows)]]
    slots = [layout.peers[0], *layout.peers]
    for slot, (r, head) in zip(slots, jobs, strict=True):
        assert slot.cgroup is not None
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker",
                "--model", args.model, "--rows", str(r)]  # fmt: skip
        if head:
            argv.append("--classifier")
        inner = ["sh", "-c", f'echo $$ > {slot.cgroup}/tasks && exec "$@"', "sh", *argv]
        proc = subprocess.Popen(
            inner, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        emu.pids.append(proc.pid)
        workers.append(Worker(proc))
    for w in workers:
        if w.recv() != "ready":
            raise RuntimeError(f"worker pid {w.proc.pid} did not start")
    alone, strips = workers[0], workers[1:]
    times: dict[str, list[float]] = {"local": [], **{m: [] for m in args.modes}}
    per_peer: dict[str, list[list[float]]] = {m: [] for m in args.modes}
    for k in range(args.k):
        time.sleep(args.gap)  # 0 by default: back to back, as the cluster benchmark
        times["local"].append(one_request([alone], "free")[0])
        for m in args.modes:
            time.sleep(args.gap)
            wall, each = one_request(strips, m)
            times[m].append(wall)
            per_peer[m].append(each)
        print(f"  request {k + 1}/{args.k}", file=sys.stderr, flush=True)
    for w in workers:
        w.send("quit")
    return times, per_peer


def run(args: argparse.Namespace) -> dict[str, Any]:
    ok, why = can_emulate()
    if not ok:
        raise SystemExit(f"compute_ceiling needs cgroup v1 cpu quotas as root: {why}")
    shares = list(SHARES)
    rows = strip_rows(shares) if args.split is None else args.split
    layout = make_layout(shares, None, prefix="edgeci-ceil", netns=False, cpu_weight=8192)
    emu = Emulation(layout, SystemHost())
    results: dict[str, Any] = {"shares": shares, "rows": rows, "k": args.k, "modes": {}}
    with emu.running():
        workers: list[Worker] = []
        try:
            times, per_peer = _measure(args, layout, rows, emu, workers)
        finally:
            # Reap our workers here: a zombie would count as a left-over process.
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                w.proc.wait(timeout=10)
    local = statistics.median(times["local"])
    ideal = sum(shares) / max(shares)
    results["local_ms"] = local
    results["ideal_speedup"] = ideal
    for m in args.modes:
        med = statistics.median(times[m])
        results["modes"][m] = {
            "median_ms": med,
            "speedup": local / med,
            "efficiency": local / med / ideal,
            "per_peer_median_ms": [
                statistics.median(r[i] for r in per_peer[m]) for i in range(len(shares))
            ],
        }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=IMAGE, help=argparse.SUPPRESS)
    p.add_argument("--classifier", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="vgg16", choices=["vgg16"])
    p.add_argument("--k", type=int, default=20, help="requests per mode")
    p.add_argument(
        "--gap", type=float, default=0.0,
        help="seconds of quiet before each request (0: back to back, as benchmarks/cluster.py)",
    )  # fmt: skip
    p.add_argument(
        "--modes", default="free,pool,conv,halo",
        help="free: no synchronisation; pool: every worker waits for all after each pool "
        "(one exchange per block); conv: for all after each conv layer; halo: for its "
        "neighbours after each conv layer (a halo exchange per layer)",
    )  # fmt: skip
    p.add_argument(
        "--split", type=lambda v: [int(x) for x in v.split(",")],
        help="input rows per worker instead of by quota, e.g. 76,64,50,34 (sum 224)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.model, args.rows, args.classifier)
        return 0
    if args.split is not None and (
        len(args.split) != len(SHARES) or min(args.split) < 32 or sum(args.split) > 4 * IMAGE
    ):
        p.error(f"--split needs {len(SHARES)} row counts of at least 32 (five 2x2 pools)")
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
    res = run(args)
    print(f"shares {res['shares']}  strip rows {res['rows']}  K={res['k']}")
    print(f"local (0.6-core peer, whole model): {res['local_ms']:.1f} ms")
    print(f"{'mode':6} {'median ms':>10} {'speedup':>8} {'effic.':>7}  per-peer median ms")
    for m, r in res["modes"].items():
        per = " ".join(f"{t:6.1f}" for t in r["per_peer_median_ms"])
        print(f"{m:6} {r['median_ms']:10.1f} {r['speedup']:8.2f} {r['efficiency']:7.2f}  {per}")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

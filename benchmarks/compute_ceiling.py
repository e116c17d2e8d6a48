"""What the emulated cluster's CPUs allow, with no network at all: the efficiency ceiling.

Parallel efficiency on ``emulated-4`` is measured against an ideal speed-up of 2.5
(quotas 0.6 + 0.4 + 0.3 + 0.2 over the best 0.6, or the headroom layout's 0.4 +
0.2667 + 0.2 + 0.1333 over 0.4). That ideal assumes four capped peers compute side
by side as fast as each does alone. This benchmark measures whether they can on
this machine: the same cgroups, CFS period and layout as ``benchmarks/cluster.py``,
one worker process per peer, one torch thread each, and no sockets. Every
"request", the workers start at once on a row strip of the input sized by their
quota (the convolutions are linear in the rows), the fastest worker also runs the
head, and the request ends when the last one finishes. That is perfect strip
parallelism: no halo recompute, no transfer, no planning. The other modes add what
synchronisation costs: ``pool`` and ``conv``, no worker starts a layer before every
worker has finished the pool (or unit: a convolution of VGG, a BasicBlock of
ResNet) before it; ``halo``, before its neighbours (the strips above and below)
have finished the unit before it, which is all a halo exchange needs. That is where
one peer's CFS pause stalls the others. The ceiling is the best of the modes.

    sudo .venv/bin/python benchmarks/compute_ceiling.py [--k 20] [--model vgg16|resnet34]
        [--layout headroom|testbed] [--homogeneous N] [--cfs-period-ms 10] [--cgroup v2]

Prints per mode the median latency, speed-up over the fastest worker alone and the
efficiency against the ideal, and the last line as JSON with ``--json``.
``benchmarks/cluster.py`` runs it in the same invocation (:func:`ceiling`).
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
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from emulation import (  # noqa: E402
    DEFAULT_PERIOD_US,
    CgroupFS,
    Emulation,
    Layout,
    PeerSlot,
    SystemHost,
    can_emulate,
    default_layout,
    detect_cgroup,
    headroom_shares,
    homogeneous_cpus,
    machine_cores,
    make_layout,
    packed_cpus,
)

SHARES = (0.6, 0.4, 0.3, 0.2)
IMAGE = 224
MODES = ("free", "pool", "conv", "halo")
MODELS = ("vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34")


# ---- worker (runs inside one cgroup) -------------------------------------------------


def split_model(model: Any) -> tuple[list[Any], set[int], set[int], Any]:
    """A VGG or ResNet (BasicBlock) as a chain of layers, the indices after which a
    ``conv`` barrier falls (each unit: a VGG convolution with its ReLU, the ResNet stem's
    ReLU and every BasicBlock), those after which a ``pool`` barrier falls (each VGG
    pool; the ResNet stem's pool and each stage's last block, before the map halves),
    and the head (the 512x7x7 map to logits)."""
    import torch

    if hasattr(model, "features"):
        layers = list(model.features)
        conv_ends = {i for i, m in enumerate(layers) if isinstance(m, torch.nn.ReLU)}
        pool_ends = {i for i, m in enumerate(layers) if isinstance(m, torch.nn.MaxPool2d)}

        def head(h: Any) -> Any:
            return model.classifier(torch.flatten(model.avgpool(h), 1))

        return layers, conv_ends, pool_ends, head
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    layers = [model.conv1, model.bn1, model.relu, model.maxpool]
    conv_ends, pool_ends = {2}, {3}
    for stage in stages:
        for block in stage:
            conv_ends.add(len(layers))
            layers.append(block)
        pool_ends.add(len(layers) - 1)

    def resnet_head(h: Any) -> Any:
        return model.fc(torch.flatten(model.avgpool(h), 1))

    return layers, conv_ends, pool_ends, resnet_head


def worker(model_name: str, rows: int, classifier: bool) -> None:
    import torch

    from edgeci_p2p.nn.models import load_model

    torch.set_num_threads(1)
    model = load_model(model_name, use_hub_cache=False).module
    # Barrier points per mode: after every unit (a halo exchange per layer) or after
    # every pool (one per fused block).
    feats, conv_ends, pool_ends, run_head = split_model(model)
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
                run_head(head)

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


def strip_rows(shares: Sequence[float | None]) -> list[int]:
    """Rows by quota (uncapped workers alike); at least 32 so that five halvings leave a
    row."""
    weights = [1.0 if s is None else s for s in shares]
    total = sum(weights)
    return [max(32, math.ceil(IMAGE * s / total)) for s in weights]


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


def drive(
    workers: Sequence[Worker],
    command: str,
    release: Callable[[list[int], list[bool]], Sequence[int]],
) -> tuple[float, list[list[str]]]:
    """Send ``command`` to every worker, then answer each barrier it reports ("b")
    with "go" once ``release(reached, waiting)`` names it (``reached``: barriers passed
    per worker, a large number once it is done), until every worker reports "done ...".
    Returns the wall time (ms) and each worker's "done" line, split."""
    t0 = time.perf_counter()
    for w in workers:
        w.send(command)
    n = len(workers)
    reached = [0] * n
    waiting = [False] * n
    done: dict[int, list[str]] = {}
    sel = selectors.DefaultSelector()
    for i, w in enumerate(workers):
        sel.register(w.stdout, selectors.EVENT_READ, i)
    try:
        while len(done) < n:
            for key, _ in sel.select():
                i = key.data
                r = workers[i].recv()
                if r.startswith("done"):
                    done[i] = r.split()
                    reached[i] = DONE
                    sel.unregister(key.fileobj)
                else:
                    reached[i] += 1
                    waiting[i] = True
            for i in release(reached, waiting):
                waiting[i] = False
                workers[i].send("go")
    finally:
        sel.close()
    return 1000 * (time.perf_counter() - t0), [done[i] for i in range(n)]


DONE = 1 << 30
"""What :func:`drive` counts as a finished worker's barriers."""


def one_request(workers: Sequence[Worker], mode: str) -> tuple[float, list[float]]:
    """All workers start at once; returns the wall time until the last is done and
    each worker's own time. A worker that reports a barrier (it finished layer L)
    waits until it may go on: in ``conv`` and ``pool`` mode once every worker has
    finished layer L, in ``halo`` mode once its neighbours (the strips above and
    below) have, which is all a halo exchange needs."""
    wire = "conv" if mode == "halo" else mode
    wall, done = drive(workers, wire, lambda reached, waiting: released(mode, reached, waiting))
    return wall, [float(d[1]) for d in done]


def start_workers(
    emu: Emulation, slots: Sequence[PeerSlot], argvs: Sequence[list[str]]
) -> list[Worker]:
    """One worker per slot, each started uncapped (pinned where the layout pins) and
    moved into its slot's cgroup once it says "ready": loading torch and a model at
    0.13 of a core would take most of a minute. On failure the workers already started
    are left to :func:`reap` (they are in the returned list's place, ``emu.pids``)."""
    workers: list[Worker] = []
    try:
        for slot, argv in zip(slots, argvs, strict=True):
            proc = subprocess.Popen(
                emu.command(replace(slot, cgroup=None), argv), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            )  # fmt: skip
            emu.pids.append(proc.pid)
            workers.append(Worker(proc))
        for w in workers:
            if w.recv() != "ready":
                raise RuntimeError(f"worker pid {w.proc.pid} did not start")
        for slot, w in zip(slots, workers, strict=True):
            emu.adopt(slot, w.proc.pid)
    except BaseException:
        reap(workers)
        raise
    return workers


def reap(workers: Sequence[Worker]) -> None:
    """Kill what still runs and wait for every worker: a zombie would count as a
    left-over process."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(timeout=10)


def _measure(
    model: str,
    k: int,
    modes: Sequence[str],
    gap: float,
    layout: Layout,
    rows: Sequence[int],
    emu: Emulation,
    workers: list[Worker],
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    # The fastest peer's cgroup holds two workers: the whole model alone (the best
    # single device, never run at the same time as the strips) and its strip, which
    # also runs the head.
    best = max(range(len(layout.peers)), key=lambda i: layout.peers[i].share or 1.0)
    jobs = [(IMAGE, True), *[(r, i == best) for i, r in enumerate(rows)]]
    slots = [layout.peers[best], *layout.peers]
    argvs = [
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model,
         "--rows", str(r), *(["--classifier"] if head else [])]
        for r, head in jobs
    ]  # fmt: skip
    workers.extend(start_workers(emu, slots, argvs))
    alone, strips = workers[0], workers[1:]
    times: dict[str, list[float]] = {"local": [], **{m: [] for m in modes}}
    per_peer: dict[str, list[list[float]]] = {m: [] for m in modes}
    for i in range(k):
        time.sleep(gap)  # 0 by default: back to back, as the cluster benchmark
        times["local"].append(one_request([alone], "free")[0])
        for m in modes:
            time.sleep(gap)
            wall, each = one_request(strips, m)
            times[m].append(wall)
            per_peer[m].append(each)
        print(f"  {model} ceiling: request {i + 1}/{k}", file=sys.stderr, flush=True)
    for w in workers:
        w.send("quit")
    return times, per_peer


def ceiling(
    model: str,
    shares: Sequence[float | None],
    *,
    k: int = 10,
    modes: Sequence[str] = MODES,
    gap: float = 0.0,
    period_us: int = DEFAULT_PERIOD_US,
    cgroup: CgroupFS | None = None,
    cpus: Sequence[int | None] | None = None,
    cpu_weight: int | None = 8192,
    split: Sequence[int] | None = None,
    ideal: float | None = None,
) -> dict[str, Any]:
    """Measure the ceiling of ``model`` on a cluster of ``shares`` (None: an uncapped
    peer, then best pinned to ``cpus``): per mode the median latency, speed-up over the
    fastest worker alone and efficiency against ``ideal`` (default: sum of the shares
    over the largest; the number of peers when uncapped); ``ceiling`` is the best
    efficiency of the modes and ``ceiling_mode`` the mode that reached it. Needs root
    and a cgroup cpu controller when any share is capped."""
    if any(s is not None for s in shares):
        if cgroup is None:
            cgroup, why = detect_cgroup()
            if cgroup is None:
                raise RuntimeError(f"compute ceiling needs cgroup cpu quotas: {why}")
        if os.geteuid() != 0:
            raise RuntimeError("compute ceiling needs root for its cgroups")
    rows = strip_rows(shares) if split is None else list(split)
    layout = make_layout(
        list(shares), None, prefix="edgeci-ceil", netns=False, cpu_weight=cpu_weight,
        period_us=period_us, cgroup=cgroup, cpus=cpus,
    )  # fmt: skip
    emu = Emulation(layout, SystemHost())
    results: dict[str, Any] = {
        "model": model, "shares": list(shares), "rows": rows, "k": k,
        "period_ms": period_us / 1000, "cgroup": str(layout.cgroup),
        "cpus": list(cpus) if cpus is not None else None, "modes": {},
    }  # fmt: skip
    with emu.running():
        workers: list[Worker] = []
        try:
            times, per_peer = _measure(model, k, modes, gap, layout, rows, emu, workers)
        finally:
            reap(workers)
    local = statistics.median(times["local"])
    if ideal is None:
        capped = [s for s in shares if s is not None]
        ideal = sum(capped) / max(capped) if len(capped) == len(shares) else len(shares)
    results["local_ms"] = local
    results["ideal_speedup"] = ideal
    for m in modes:
        med = statistics.median(times[m])
        results["modes"][m] = {
            "median_ms": med,
            "speedup": local / med,
            "efficiency": local / med / ideal,
            "per_peer_median_ms": [
                statistics.median(r[i] for r in per_peer[m]) for i in range(len(shares))
            ],
        }
    best = max(modes, key=lambda m: results["modes"][m]["efficiency"])
    results["ceiling"] = results["modes"][best]["efficiency"]
    results["ceiling_mode"] = best
    return results


def layout_shares(
    layout: str,
    base: Sequence[float],
    cores: int,
    homogeneous: int | None = None,
    pin: str = "none",
) -> tuple[str, list[float | None], list[int | None] | None]:
    """(the layout's name, its shares, its pinned cores) for ``--layout`` (auto, headroom,
    testbed) over the testbed's ``base`` shares, or ``--homogeneous N`` (N uncapped
    peers pinned to distinct cores; ValueError when the machine has too few). ``pin``
    ``packed`` pins the capped peers to the machine's cores (:func:`packed_cpus`)."""
    if homogeneous is not None:
        cpus: list[int | None] = list(homogeneous_cpus(homogeneous, machine_cores()))
        return f"homogeneous-{homogeneous}", [None] * homogeneous, cpus
    name = default_layout(cores) if layout == "auto" else layout
    shares = list(headroom_shares(base, cores)) if name == "headroom" else list(base)
    if pin == "packed":
        packed: list[int | None] = list(packed_cpus(shares, machine_cores()[:cores]))
        return f"{name}-packed", list(shares), packed
    if pin != "none":
        raise ValueError(f"unknown pinning {pin!r} (none, packed)")
    return name, list(shares), None


def run(args: argparse.Namespace) -> dict[str, Any]:
    ok, why = can_emulate(cgroup=args.cgroup)
    if not ok:
        raise SystemExit(f"compute_ceiling needs root and cgroup cpu quotas: {why}")
    name, shares, cpus = layout_shares(
        args.layout, SHARES, len(machine_cores()), args.homogeneous, args.pin
    )
    res = ceiling(
        args.model, shares, k=args.k, modes=args.modes, gap=args.gap,
        period_us=round(args.cfs_period_ms * 1000), cgroup=detect_cgroup(args.cgroup)[0],
        cpus=cpus, split=args.split,
    )  # fmt: skip
    res["layout"] = name
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=IMAGE, help=argparse.SUPPRESS)
    p.add_argument("--classifier", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="vgg16", choices=MODELS)
    p.add_argument(
        "--layout", choices=["auto", "headroom", "testbed"], default="auto",
        help="headroom: the 0.6/0.4/0.3/0.2 ratios within half the machine (the default "
        "below 8 cores); testbed: 0.6/0.4/0.3/0.2 of a core",
    )  # fmt: skip
    p.add_argument(
        "--homogeneous", type=int, metavar="N",
        help="N uncapped workers, each pinned to a core of its own (N <= cores - 1)",
    )  # fmt: skip
    p.add_argument(
        "--pin", choices=["none", "packed"], default="none",
        help="packed: each capped worker pinned to a core, the cores' quotas balanced",
    )  # fmt: skip
    p.add_argument(
        "--cfs-period-ms", type=float, default=DEFAULT_PERIOD_US / 1000,
        help="CFS period of the capped workers (benchmarks/cfs_period.py compares them)",
    )  # fmt: skip
    p.add_argument("--cgroup", choices=["auto", "v1", "v2"], default="auto")
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
    n = args.homogeneous or len(SHARES)
    if args.split is not None and (
        len(args.split) != n or min(args.split) < 32 or sum(args.split) > 4 * IMAGE
    ):
        p.error(f"--split needs {n} row counts of at least 32 (five 2x2 pools)")
    if args.homogeneous is not None:
        try:
            homogeneous_cpus(args.homogeneous, machine_cores())
        except ValueError as e:
            p.error(str(e))
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
    res = run(args)
    print(
        f"{res['model']}, layout {res['layout']}: shares {res['shares']}  strip rows "
        f"{res['rows']}  K={res['k']}  CFS period {res['period_ms']:g} ms, {res['cgroup']}"
    )
    print(f"local (fastest peer, whole model): {res['local_ms']:.1f} ms")
    print(f"{'mode':6} {'median ms':>10} {'speedup':>8} {'effic.':>7}  per-peer median ms")
    for m, r in res["modes"].items():
        per = " ".join(f"{t:6.1f}" for t in r["per_peer_median_ms"])
        print(f"{m:6} {r['median_ms']:10.1f} {r['speedup']:8.2f} {r['efficiency']:7.2f}  {per}")
    print(
        f"ceiling: {res['ceiling']:.2f} of the ideal {res['ideal_speedup']:.2f}x "
        f"({res['ceiling_mode']})"
    )
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

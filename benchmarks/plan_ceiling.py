"""What a traced request's own plan allows on the emulated cluster, with no network and
no daemon: its pieces computed in the peers' cgroups, nothing else.

``benchmarks/compute_ceiling.py`` measures what the CPUs allow: strips sized by quota,
one call per layer, no halo recompute. The daemon runs a plan instead: fused stages
(halo rows recomputed), strips cut where the planner put them, each cut into edge-first
pieces (``core/pieces.py``), the fc1 fold on the last strips and the rest of the head
on the auctioneer. This replays a kept trace's plan (``benchmarks/cluster.py --traces
DIR``) exactly so: one worker process per plan device, in the cgroup of the peer with
the same rank of speed in the plan's bids (fastest bid, largest quota), each running
its parts of every stage as the daemon's pieces through the same executor, on random
slabs of the same shapes. Between stages a worker waits only for what the daemon would
wait for: after a halo boundary, the peers whose strips hold rows its next part reads;
after a gather, every peer (the auctioneer stitches and cuts again); the auctioneer's
head waits for every worker. Nothing is sent: no sockets, no event loops, no planning,
no messages; a worker's middle piece never overlaps a neighbour's late rows either (a
barrier per stage, which the daemon's edge-first order softens).

So the measured latency splits in three: the compute ceiling (the CPUs), this (the
plan's own compute: its recompute, its pieces and their cold caches, its balance), and
the rest (the runtime: loops, messages, waits for rows in flight).

    sudo .venv/bin/python benchmarks/plan_ceiling.py DIR/vgg16-edgeci-halo-09.json
        [--k 10] [--cfs-period-ms 10] [--cgroup auto|v1|v2] [--json]

Prints the plan, then the median latency of the plan replayed and of the fastest peer
alone running the whole model through the same executor, the speed-up and efficiency
(against the headroom layout's ideal), and each worker's CPU per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compute_ceiling import SHARES, Worker, drive, reap, start_workers  # noqa: E402
from emulation import (  # noqa: E402
    DEFAULT_PERIOD_US,
    CgroupFS,
    Emulation,
    SystemHost,
    can_emulate,
    detect_cgroup,
    headroom_shares,
    machine_cores,
    make_layout,
)

from edgeci_p2p.core.geometry import Region, Span, trace  # noqa: E402
from edgeci_p2p.core.pieces import edge_first_pieces  # noqa: E402
from edgeci_p2p.core.plan import Plan, segments  # noqa: E402
from edgeci_p2p.core.units import ModelSpec  # noqa: E402
from edgeci_p2p.core.workload import Workload  # noqa: E402
from edgeci_p2p.policy.strip_jobs import strip_jobs  # noqa: E402
from edgeci_p2p.wire.messages import StripStage  # noqa: E402


@dataclass(frozen=True)
class Piece:
    """One call of a worker: units ``[start, stop)`` for output region ``out``."""

    stage: int
    start: int
    stop: int
    out: Region


def load_plan(path: Path) -> tuple[Plan, list[int]]:
    """A kept trace's plan, and each plan device's rank of speed (0: the largest quota):
    the auctioneer first (``benchmarks/cluster.py`` sends every request to its fastest
    peer), the others by their bids' conv fits. (The auctioneer's own bid is no guide:
    it prices its compute up by its loop's share, 1.35x in one run's AOFL rounds, which
    ranked it below the 0.27-core peer.)"""
    doc = json.loads(path.read_text())
    stored = doc.get("plan", doc)
    tb = stored.get("testbed")
    if not isinstance(tb, dict):
        raise SystemExit(f"{path}: the plan keeps no bids (testbed): not a kept trace?")
    plan = replace(Plan.from_dict(stored), testbed=str(tb.get("name", "bids")))
    names = [d["name"] for d in tb["devices"]]
    slope = {d["name"]: d["compute"]["conv"]["a"] for d in tb["devices"]}
    head = plan.devices[plan.auctioneer]
    by_speed = [
        head,
        *sorted((n for n in plan.devices if n != head), key=lambda n: slope.get(n, 1.0)),
    ]
    missing = [n for n in plan.devices if n not in names]
    if missing:
        raise SystemExit(f"{path}: plan devices {missing} have no bid")
    return plan, [by_speed.index(n) for n in plan.devices]


def strip_stages(spec: ModelSpec, plan: Plan) -> dict[int, dict[int, StripStage]]:
    """Per stage index, per device, the strip-job stage the daemon would send it
    (:func:`~edgeci_p2p.policy.strip_jobs.strip_jobs`: its rows, the rows it receives and
    sends); stages of a segment that cannot run as strip jobs, and gather stages, are
    absent (the daemon runs them as one tile per part)."""
    out: dict[int, dict[int, StripStage]] = {}
    for first, last in segments(plan):
        jobs = strip_jobs(spec, plan, first, last, list(plan.devices))
        if (first == last and not plan.folds_after(last)) or jobs is None:
            continue
        for d, stages in jobs.stages.items():
            for k, st in enumerate(stages):
                out.setdefault(first + k, {})[d] = st
    return out


def pieces_of(spec: ModelSpec, plan: Plan, device: int) -> list[list[Piece]]:
    """Per stage, ``device``'s calls as the daemon makes them: a strip job's stage cut
    edge first around the rows it sends (:func:`edge_first_pieces`, as
    ``aio/strips.stage_pieces``), any other part one call."""
    work = Workload(spec)
    jobs = strip_stages(spec, plan)
    out: list[list[Piece]] = []
    for si, st in enumerate(plan.stages):
        calls = []
        job = jobs.get(si, {}).get(device)
        if job is not None:
            cols = Span(0, spec.shape_at(st.stop)[2])
            sends = [(r.rows[0], r.rows[1]) for r in job.send]
            for c in edge_first_pieces(work, st.start, st.stop, job.rows, sends):
                calls.append(Piece(si, st.start, st.stop, Region(Span(*c.rows), cols)))
        else:
            calls = [Piece(si, st.start, st.stop, p.region) for p in st.parts if p.device == device]
        out.append(calls)
    return out


def waits_for(spec: ModelSpec, plan: Plan) -> list[list[set[int]]]:
    """``[d][s]``: the devices whose stage ``s - 1`` device ``d`` waits for before its
    stage ``s`` (s >= 1): inside a strip job the peers it receives rows from, after a
    gather every device."""
    n = len(plan.devices)
    jobs = strip_stages(spec, plan)
    index = {name: i for i, name in enumerate(plan.devices)}
    out: list[list[set[int]]] = [[set()] for _ in range(n)]
    for si in range(1, len(plan.stages)):
        st = plan.stages[si]
        for d in range(n):
            job = jobs.get(si, {}).get(d)
            if not any(p.device == d for p in st.parts):
                out[d].append(set())
            elif job is not None and plan.stages[si - 1].transfer == "halo":
                out[d].append({index[r.node] for r in job.recv})
            else:
                out[d].append(set(range(n)) - {d})
    return out


# ---- worker (inside one cgroup) --------------------------------------------------------


def worker(trace_path: Path, device: int | None) -> None:
    """Replay ``device``'s share of the plan on each "go" (None: the whole model alone)."""
    import torch

    from edgeci_p2p.core.geometry import full_region
    from edgeci_p2p.nn.executor import FusedExecutor
    from edgeci_p2p.nn.extract import describe
    from edgeci_p2p.nn.fold import Fold
    from edgeci_p2p.nn.models import load_model

    torch.set_num_threads(1)
    plan, _ = load_plan(trace_path)
    lm = load_model(plan.model)
    h_in, w_in = 224, 224
    spec = describe(lm.module, plan.model, h_in, w_in)
    ex = FusedExecutor(lm.module, spec)
    fold = Fold(ex) if plan.fold_head else None
    head_here = device is None or device == plan.head_at

    def slab(start: int, region: Region) -> Any:
        c = spec.shape_at(start)[0]
        x = torch.randn(1, c, region.rows.size, region.cols.size)
        return x.contiguous(memory_format=torch.channels_last)

    calls: list[list[tuple[Any, Any]]] = []
    if device is None:
        _, h, w = spec.shape_at(spec.n_units)
        tr = trace(spec, 0, spec.n_units, full_region(h, w))
        calls = [[(tr, slab(0, tr.need))]]
    else:
        for stage in pieces_of(spec, plan, device):
            made = []
            for pc in stage:
                tr = trace(spec, pc.start, pc.stop, pc.out)
                made.append((tr, slab(pc.start, tr.need)))
            calls.append(made)
    last = plan.stages[-1]
    mine = [p for p in last.parts if p.device == device]
    c, hl, wl = spec.shape_at(last.stop)
    folds = [(p.region.rows.start, p.region.rows.stop) for p in mine] if fold is not None else []
    fold_in = [torch.randn(1, c, b - a, wl) for a, b in folds]
    head_in = (
        torch.randn(1, fold.blocks().shape[-1], 1, 1)
        if fold is not None and device is not None
        else torch.randn(1, c, hl, wl)
    )
    out = sys.stdout

    def barrier(gated: bool) -> bool:
        if not gated:
            return True
        out.write("b\n")
        out.flush()
        return sys.stdin.readline().strip() == "go"

    def step(gated: bool = True) -> None:
        with torch.inference_mode():
            for si, stage in enumerate(calls):
                if si > 0 and not barrier(gated):
                    raise SystemExit(0)
                for tr, x in stage:
                    ex.run_trace(tr, x, tr.need)
            for (a, b), x in zip(folds, fold_in, strict=True):
                fold.partial(x, (a, b))  # type: ignore[union-attr]
            if head_here:
                if device is not None and not barrier(gated):  # every part's sums are in
                    raise SystemExit(0)
                if fold is not None and device is not None:
                    fold.head(head_in)
                else:
                    ex.head(head_in)

    step(gated=False)  # warm-up: oneDNN's primitives per shape, the fold's weight layout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() == "quit":
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        step()
        wall, cpu = 1000 * (time.perf_counter() - t0), 1000 * (time.thread_time() - c0)
        out.write(f"done {wall:.2f} {cpu:.2f}\n")
        out.flush()


# ---- parent ----------------------------------------------------------------------------


def one_request(workers: Sequence[Worker], deps: list[list[set[int]]]) -> tuple[float, list[float]]:
    """Every worker starts at once; a worker that reports a barrier before its stage
    ``s`` goes on once ``deps[d][s]`` have finished stage ``s - 1``; the head's last
    barrier once every other worker is done. Returns the wall time (ms) and each
    worker's CPU (ms)."""
    n, stages = len(workers), len(deps[0])

    def release(reached: list[int], waiting: list[bool]) -> list[int]:
        out = []
        for i in range(n):
            s = reached[i]  # stages finished
            if not waiting[i]:
                continue
            gate = set(range(n)) - {i} if s >= stages else deps[i][s]
            if all(reached[j] >= min(s, stages) for j in gate):
                out.append(i)
        return out

    wall, done = drive(workers, "go", release)
    return wall, [float(d[2]) for d in done]


def replay(
    path: Path,
    shares: Sequence[float | None],
    *,
    k: int = 10,
    period_us: int = DEFAULT_PERIOD_US,
    cgroup: CgroupFS | None = None,
    cpus: Sequence[int | None] | None = None,
    cpu_weight: int | None = 8192,
    ideal: float | None = None,
) -> dict[str, Any]:
    """Replay the plan kept in ``path`` ``k`` times on a layout of ``shares`` (as
    :func:`compute_ceiling.ceiling` makes it), each time after the fastest peer alone
    runs the whole model: the medians, speed-up, efficiency against ``ideal`` (default:
    the shares' sum over their largest) and each plan device's CPU per request."""
    from edgeci_p2p.nn.spec import spec_for

    plan, rank = load_plan(path)
    spec = spec_for(plan.model, 224, 224)
    if len(plan.devices) > len(shares):
        raise ValueError(f"{path}: {len(plan.devices)} devices, the layout has {len(shares)} peers")
    layout = make_layout(
        list(shares), None, prefix="edgeci-plc", netns=False, cpu_weight=cpu_weight,
        period_us=period_us, cgroup=cgroup, cpus=list(cpus) if cpus is not None else None,
    )  # fmt: skip
    # Peers by quota, largest first (uncapped ones first of all): the plan's fastest
    # bidder goes where the cluster's fastest peer was.
    by_share = sorted(layout.peers, key=lambda p: -(p.share or float("inf")))
    deps = waits_for(spec, plan)
    emu = Emulation(layout, SystemHost())
    slots = [by_share[0], *[by_share[r] for r in rank]]
    devices: list[int | None] = [None, *range(len(plan.devices))]
    times: dict[str, list[float]] = {"alone": [], "plan": []}
    cpu: list[list[float]] = []
    argvs = [
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(path),
         *([] if d is None else ["--device", str(d)])]
        for d in devices
    ]  # fmt: skip
    with emu.running():
        workers: list[Worker] = []
        try:
            workers = start_workers(emu, slots, argvs)
            alone, parts = workers[0], workers[1:]
            for i in range(k):
                times["alone"].append(one_request([alone], [[set()]])[0])
                wall, each = one_request(parts, deps)
                times["plan"].append(wall)
                cpu.append(each)
                print(f"  plan replay: request {i + 1}/{k}", file=sys.stderr, flush=True)
            for w in workers:
                w.send("quit")
        finally:
            reap(workers)
    alone_ms, plan_ms = statistics.median(times["alone"]), statistics.median(times["plan"])
    if ideal is None:
        capped = [s for s in shares if s is not None]
        ideal = sum(capped) / max(capped) if len(capped) == len(shares) else len(shares)
    predicted = None if plan.predicted is None else plan.predicted * 1e3
    return {
        "trace": str(path), "strategy": plan.strategy, "model": plan.model,
        "stages": len(plan.stages), "predicted_ms": predicted,
        "shares": list(shares), "share_of_device": [by_share[r].share for r in rank], "k": k,
        "period_ms": period_us / 1000, "cgroup": str(layout.cgroup),
        "alone_ms": alone_ms, "plan_ms": plan_ms, "speedup": alone_ms / plan_ms,
        "efficiency": alone_ms / plan_ms / ideal, "ideal_speedup": ideal,
        "cpu_ms": [statistics.median(c[i] for c in cpu) for i in range(len(plan.devices))],
    }  # fmt: skip


def run(path: Path, k: int, period_us: int, cgroup_kind: str) -> dict[str, Any]:
    """:func:`replay` on the headroom layout of this machine."""
    ok, why = can_emulate(cgroup=cgroup_kind)
    if not ok:
        raise SystemExit(f"plan_ceiling needs root and cgroup cpu quotas: {why}")
    shares = list(headroom_shares(SHARES, len(machine_cores())))
    try:
        return replay(path, shares, k=k, period_us=period_us, cgroup=detect_cgroup(cgroup_kind)[0])
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", type=Path, help="a kept trace (benchmarks/cluster.py --traces DIR)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", type=int, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=10, help="requests replayed")
    p.add_argument("--cfs-period-ms", type=float, default=DEFAULT_PERIOD_US / 1000)
    p.add_argument("--cgroup", choices=["auto", "v1", "v2"], default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.trace, args.device)
        return 0
    plan, _ = load_plan(args.trace)
    print(plan)
    res = run(args.trace, args.k, round(args.cfs_period_ms * 1000), args.cgroup)
    pred = "" if res["predicted_ms"] is None else f" (its prediction {res['predicted_ms']:.1f} ms)"
    print(
        f"{res['model']} {res['strategy']}, {res['stages']} stages, K={res['k']}, CFS period "
        f"{res['period_ms']:g} ms, {res['cgroup']}\n"
        f"fastest peer alone, whole model: {res['alone_ms']:.1f} ms\n"
        f"the plan replayed, no network: {res['plan_ms']:.1f} ms{pred}: speed-up "
        f"{res['speedup']:.2f}, efficiency {res['efficiency']:.2f} of the ideal "
        f"{res['ideal_speedup']:.2f}x"
    )
    cpu = "  ".join(
        f"{s:.2f} core: {c:.1f}" for s, c in zip(res["share_of_device"], res["cpu_ms"], strict=True)
    )
    print(f"CPU per request (ms, plan device order): {cpu}")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Discrete-event simulation of a plan on a testbed (pure).

The model (the same one the planners optimise, so a plan's predicted latency
is its simulated latency):

* Stages run one after another. In ``gather`` mode a stage starts when the
  previous stage's last output strip has reached the auctioneer; stage 0 starts
  at time 0 with the input image on the auctioneer.
* Each part needs its input slab (output region traced back through the stage,
  halo rows included) sent from the auctioneer, then computes, then sends its
  output region back. Parts on the auctioneer itself move no bytes.
* A device computes one part at a time, in the order its inputs arrive, taking
  ``sum over units of a_kind * FLOPs + b_kind`` (one call per unit, because the
  profiler times single units).
* A transfer of B bytes over device j's link occupies the auctioneer's radio for
  ``B / bandwidth_j`` and arrives ``rtt_j / 2`` after it leaves the radio.
  When ``testbed.shared_medium`` (one Wi-Fi cell, half duplex) all sends and
  receives of the auctioneer share one queue. Otherwise (switched links, full
  duplex) its sends share one queue and its receives another: each link is its
  own, but the auctioneer's own NIC still carries one frame at a time in each
  direction. Queues are FIFO by request time (ties in part order).
* ``push`` stages request every input slab at the stage start, in part order;
  ``pull`` stages (work stealing) request a device's next slab when the device
  starts computing its current part (one tile of look-ahead).
* The head runs on the auctioneer after the last stage.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.geometry import FLOAT32_BYTES, head_flops
from edgeci_p2p.core.plan import Plan, Stage
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import Workload

Lane = Literal["compute", "send", "recv"]


@dataclass(frozen=True)
class Task:
    """One part reduced to what the schedule needs."""

    device: int
    in_bytes: int
    seconds: float
    out_bytes: int
    label: str = ""


@dataclass(frozen=True)
class Event:
    """A busy interval of one device's lane (for the Gantt chart)."""

    device: int
    lane: Lane
    start: float
    stop: float
    stage: int
    label: str = ""


@dataclass(frozen=True)
class SimResult:
    latency: float
    """Seconds from the request to the logits."""
    bytes_moved: int
    """Bytes sent over links (the auctioneer's own parts move nothing)."""
    stage_ends: tuple[float, ...]
    events: tuple[Event, ...] = field(default=(), repr=False)

    def busy(self, device: int, lane: Lane = "compute") -> float:
        return sum(e.stop - e.start for e in self.events if e.device == device and e.lane == lane)


_REQ_IN, _IN_DONE, _COMP_DONE = 0, 1, 2


def run_stage(
    tasks: Sequence[Task],
    testbed: Testbed,
    t0: float = 0.0,
    pull: bool = False,
    events: list[Event] | None = None,
    stage: int = 0,
) -> float:
    """Simulate one stage from ``t0``; return when its last output is on the auctioneer."""
    if events is None and not pull and len({t.device for t in tasks}) == len(tasks):
        return _one_task_per_device_end(tasks, testbed, t0)
    aid = testbed.auctioneer
    shared = testbed.shared_medium
    free = [t0, t0]  # tx, rx queues (the same queue when shared)
    heap: list[tuple[float, int, int, int]] = []
    seq = 0
    per_dev: dict[int, list[int]] = {}
    for k, t in enumerate(tasks):
        per_dev.setdefault(t.device, []).append(k)
    next_idx = {d: 0 for d in per_dev}  # pull: next task of each device to request
    if pull:
        for d, ks in per_dev.items():
            heapq.heappush(heap, (t0, seq, _REQ_IN, ks[0]))
            seq += 1
            next_idx[d] = 1
    else:
        for k in range(len(tasks)):
            heapq.heappush(heap, (t0, seq, _REQ_IN, k))
            seq += 1
    ready: dict[int, list[int]] = {d: [] for d in per_dev}
    busy_until: dict[int, float] = {d: -1.0 for d in per_dev}
    end = t0

    def transfer(now: float, k: int, nbytes: int, inbound: bool) -> float:
        t = tasks[k]
        link = testbed.links[t.device]
        q = 0 if shared or inbound else 1
        start = max(now, free[q])
        free[q] = start + nbytes / link.bandwidth
        if events is not None:
            src, dst = (aid, t.device) if inbound else (t.device, aid)
            events.append(Event(src, "send", start, free[q], stage, t.label))
            events.append(Event(dst, "recv", start, free[q] + link.rtt / 2, stage, t.label))
        return free[q] + link.rtt / 2

    def start_compute(now: float, d: int) -> None:
        nonlocal seq
        if busy_until[d] > now or not ready[d]:
            return
        k = ready[d].pop(0)
        t = tasks[k]
        stop = now + t.seconds
        busy_until[d] = stop
        if events is not None:
            events.append(Event(d, "compute", now, stop, stage, t.label))
        heapq.heappush(heap, (stop, seq, _COMP_DONE, k))
        seq += 1
        if pull and next_idx[d] < len(per_dev[d]):
            heapq.heappush(heap, (now, seq, _REQ_IN, per_dev[d][next_idx[d]]))
            seq += 1
            next_idx[d] += 1

    while heap:
        now, _, kind, k = heapq.heappop(heap)
        t = tasks[k]
        if kind == _REQ_IN:
            arrive = (
                now if t.device == aid or t.in_bytes == 0 else transfer(now, k, t.in_bytes, True)
            )
            heapq.heappush(heap, (arrive, seq, _IN_DONE, k))
            seq += 1
        elif kind == _IN_DONE:
            ready[t.device].append(k)
            start_compute(now, t.device)
        else:
            busy_until[t.device] = now
            start_compute(now, t.device)
            done = (
                now if t.device == aid or t.out_bytes == 0 else transfer(now, k, t.out_bytes, False)
            )
            end = max(end, done)
    return end


def _one_task_per_device_end(tasks: Sequence[Task], testbed: Testbed, t0: float) -> float:
    """:func:`run_stage` for push stages with one task per device, without the event queue.

    Every scatter is requested at ``t0`` so the (FIFO) queue sends them first, in
    order; each gather is then requested when its compute ends and served in that
    order. The planners call this thousands of times; tests check it against the
    event-driven path.
    """
    aid = testbed.auctioneer
    q = t0
    end = t0
    finished: list[tuple[float, int]] = []
    for k, t in enumerate(tasks):
        if t.device == aid or t.in_bytes == 0:
            arrive = t0
        else:
            link = testbed.links[t.device]
            q += t.in_bytes / link.bandwidth
            arrive = q + link.rtt / 2
        finished.append((arrive + t.seconds, k))
    rx = q if testbed.shared_medium else t0
    finished.sort()
    for done, k in finished:
        t = tasks[k]
        if t.device == aid or t.out_bytes == 0:
            end = max(end, done)
            continue
        link = testbed.links[t.device]
        rx = max(rx, done) + t.out_bytes / link.bandwidth
        end = max(end, rx + link.rtt / 2)
    return end


def stage_tasks(stage: Stage, spec: ModelSpec, testbed: Testbed, work: Workload) -> list[Task]:
    """The parts of ``stage`` as tasks: slab bytes in, seconds of compute, bytes out."""
    c_in = spec.shape_at(stage.start)[0]
    c_out = spec.shape_at(stage.stop)[0]
    out: list[Task] = []
    for p in stage.parts:
        w = work.work_region(stage.start, stage.stop, p.region)
        model = testbed.devices[p.device].compute
        secs = sum(model.seconds(kind, f) for kind, f in w.unit_flops)
        remote = p.device != testbed.auctioneer
        r0, r1, c0, c1 = w.need
        in_b = c_in * (r1 - r0) * (c1 - c0) * FLOAT32_BYTES if remote else 0
        out_b = c_out * p.region.area * FLOAT32_BYTES if remote else 0
        label = f"[{stage.start},{stage.stop}) {p.region.rows.start}:{p.region.rows.stop}"
        out.append(Task(p.device, in_b, secs, out_b, label))
    return out


def head_seconds(spec: ModelSpec, testbed: Testbed) -> float:
    return testbed.devices[testbed.auctioneer].compute.seconds("head", head_flops(spec))


def simulate(
    plan: Plan,
    spec: ModelSpec,
    testbed: Testbed,
    work: Workload | None = None,
    record: bool = True,
) -> SimResult:
    """Run ``plan`` on ``testbed``; ``record`` keeps the per-device timeline."""
    if len(plan.devices) != len(testbed.devices) or plan.auctioneer != testbed.auctioneer:
        raise ValueError(
            f"plan for devices {plan.devices} (auctioneer {plan.auctioneer}) does not match "
            f"testbed {testbed.name} {tuple(testbed.names)} (auctioneer {testbed.auctioneer})"
        )
    work = work or Workload(spec)
    events: list[Event] | None = [] if record else None
    t = 0.0
    moved = 0
    ends: list[float] = []
    for k, st in enumerate(plan.stages):
        tasks = stage_tasks(st, spec, testbed, work)
        moved += sum(x.in_bytes + x.out_bytes for x in tasks)
        t = run_stage(tasks, testbed, t, st.schedule == "pull", events, k)
        ends.append(t)
    head = head_seconds(spec, testbed)
    if events is not None and head > 0:
        events.append(Event(testbed.auctioneer, "compute", t, t + head, len(plan.stages), "head"))
    return SimResult(t + head, moved, tuple(ends), tuple(events or ()))


def assign_by_pulling(
    options: Sequence[Sequence[Task]], testbed: Testbed, devices: Sequence[int], t0: float = 0.0
) -> tuple[list[int], float]:
    """Work stealing: which device ends up with each tile when idle devices pull them.

    ``options[k][d]`` is tile ``k`` as run on device ``d``. Tiles are handed out in
    order; each device in ``devices`` asks for its first tile at ``t0`` (in that
    order) and for its next one when it starts computing the current one, with
    the same transfer queues as :func:`run_stage`. Replaying the returned
    assignment with ``run_stage(..., pull=True)`` reproduces this schedule; the
    second value is that schedule's end.
    """
    aid = testbed.auctioneer
    free = [t0, t0]
    heap: list[tuple[float, int, int, int, int]] = []  # time, seq, kind, tile, device
    seq = 0
    nxt = 0
    owner = [-1] * len(options)

    def request(now: float, d: int) -> None:
        nonlocal seq, nxt
        if nxt < len(options):
            owner[nxt] = d
            heapq.heappush(heap, (now, seq, _REQ_IN, nxt, d))
            seq += 1
            nxt += 1

    def transfer(now: float, d: int, nbytes: int, inbound: bool) -> float:
        link = testbed.links[d]
        q = 0 if testbed.shared_medium or inbound else 1
        start = max(now, free[q])
        free[q] = start + nbytes / link.bandwidth
        return free[q] + link.rtt / 2

    ready: dict[int, list[int]] = {d: [] for d in devices}
    busy = dict.fromkeys(devices, False)
    end = t0

    def start_compute(now: float, d: int) -> None:
        nonlocal seq
        if busy[d] or not ready[d]:
            return
        k = ready[d].pop(0)
        busy[d] = True
        heapq.heappush(heap, (now + options[k][d].seconds, seq, _COMP_DONE, k, d))
        seq += 1
        request(now, d)

    for d in devices:
        request(t0, d)
    while heap:
        now, _, kind, k, d = heapq.heappop(heap)
        t = options[k][d]
        if kind == _REQ_IN:
            arrive = now if d == aid or t.in_bytes == 0 else transfer(now, d, t.in_bytes, True)
            heapq.heappush(heap, (arrive, seq, _IN_DONE, k, d))
            seq += 1
        elif kind == _IN_DONE:
            ready[d].append(k)
            start_compute(now, d)
        else:
            busy[d] = False
            start_compute(now, d)
            done = now if d == aid or t.out_bytes == 0 else transfer(now, d, t.out_bytes, False)
            end = max(end, done)
    return owner, end

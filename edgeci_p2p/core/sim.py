"""Discrete-event simulation of a plan on a testbed (pure).

The model (the same one the planners optimise, so a plan's predicted latency
is its simulated latency):

* A plan runs segment by segment (:func:`edgeci_p2p.core.plan.segments`); a
  segment starts when the previous one's last output strip has reached the
  auctioneer; segment 0 starts at time 0 with the input image on the auctioneer.
* Each part of a segment's first stage needs its input slab (output region
  traced back through the stage, halo rows included) sent from the auctioneer;
  each part of its last stage (which gathers) sends its output region back.
  Parts on the auctioneer itself move no bytes.
* A gather-only segment is one stage, and stages of gather-only plans run
  exactly as before strip-resident execution existed (:func:`run_stage`).
* Inside a segment with halo boundaries there is no barrier: a device starts its
  part of stage k+1 as soon as its own stage-k part is computed and every
  :class:`~edgeci_p2p.core.plan.RowMove` it needs for stage k+1 has arrived. A
  part cut edge-first (:mod:`edgeci_p2p.core.pieces`, as the daemon runs it)
  computes its edge pieces first when their input is here, sends its moves, then
  its middle; when rows are late it computes the middle first and the edges when
  they come. A part that is not cut waits for everything, then sends its moves,
  in (destination, first row) order.
* A device computes one part at a time, in the order its inputs arrive (stage
  order within a segment), taking ``sum over units of a_kind * FLOPs + b_kind``
  (one call per unit, because the profiler times single units).
* Transfers. ``links[i]`` is device i's link to the network; the auctioneer's own
  entry is ignored (its link is taken as unlimited, so a transfer between the
  auctioneer and device j costs what it did in the star-only model). A transfer
  of B bytes from ``src`` to ``dst`` takes ``B / min(bw_src, bw_dst)`` on the
  medium and arrives ``max(rtt_src, rtt_dst) / 2`` after it leaves it.

  - ``testbed.shared_medium`` (one Wi-Fi cell, half duplex): every transfer, the
    auctioneer's scatters and gathers and the peer-to-peer row moves alike,
    queues on the one medium.
  - Switched links (``shared_medium`` false, e.g. ``emulated-4``, where every veth
    is its own shaped link each way): each device has an uplink and a downlink
    queue; a transfer occupies the sender's uplink and the receiver's downlink
    from when both are free (and it is requested). In a gather-only stage only
    the auctioneer's two queues are ever contended, which is the star model: its
    sends share one queue and its receives another.

  Queues are FIFO by request time (ties in request order).
* ``push`` stages request every input slab at the stage start, in part order;
  ``pull`` stages (work stealing) request a device's next slab when the device
  starts computing its current part (one tile of look-ahead).
* The head runs on the auctioneer after the last stage, or on ``plan.head_device``
  after the last map has crossed its link (the logits come back the same way).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.geometry import (
    FLOAT32_BYTES,
    fold_bytes,
    fold_flops,
    head_flops,
    op_fixed_flops,
)
from edgeci_p2p.core.pieces import edge_first_pieces
from edgeci_p2p.core.plan import Plan, RowMove, Stage, moves_between, segments
from edgeci_p2p.core.units import SCALED, ModelSpec
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
    auctioneer_bytes: int = 0
    """Bytes through the auctioneer's own link, in and out (for a gather-only plan
    every byte moved; peer-to-peer row moves between other peers bypass it)."""

    def busy(self, device: int, lane: Lane = "compute") -> float:
        return sum(e.stop - e.start for e in self.events if e.device == device and e.lane == lane)


_REQ_IN, _IN_DONE, _COMP_DONE, _OUT_READY = 0, 1, 2, 3


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
        elif kind == _COMP_DONE:
            busy_until[t.device] = now
            start_compute(now, t.device)
            if t.device == aid or t.out_bytes == 0:
                end = max(end, now)
            else:  # its loop picks the output up, then sends it
                heapq.heappush(heap, (now + testbed.back_s(t.device), seq, _OUT_READY, k))
                seq += 1
        else:
            end = max(end, transfer(now, k, t.out_bytes, False))
    return end


def _one_task_per_device_end(tasks: Sequence[Task], testbed: Testbed, t0: float) -> float:
    """:func:`run_stage` for push stages with one task per device, without the event queue.

    Every scatter is requested at ``t0`` so the (FIFO) queue sends them first, in
    order; each gather is then requested when its device's loop has picked the output
    up (:meth:`Testbed.back_s` after its compute ends) and served in that order. The
    planners call this thousands of times; tests check it against the event-driven path.
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
        sends = t.device != aid and t.out_bytes > 0
        finished.append((arrive + t.seconds + (testbed.back_s(t.device) if sends else 0.0), k))
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


def scale_flops(spec: ModelSpec, start: int) -> int:
    """FLOPs of the scale vectors unit ``start`` needs (its squeeze-and-excitation's mean
    and 1x1 convs), made once by the auctioneer from the gathered map; 0 if none."""
    u = spec.units[start]
    hw = (u.in_shape[1], u.in_shape[2])
    return sum(op_fixed_flops(op, hw) for op in u.ops if op.kind in SCALED)


def scale_bytes(spec: ModelSpec, start: int) -> int:
    """Bytes of those vectors in each tile request (float32)."""
    u = spec.units[start]
    return sum(op.in_channels for op in u.ops if op.kind in SCALED) * FLOAT32_BYTES


def scale_seconds(spec: ModelSpec, testbed: Testbed, start: int) -> float:
    """The auctioneer making them, before it sends a stage's first slab (a global pool
    and small linear layers: timed with the head's fit)."""
    flops = scale_flops(spec, start)
    return testbed.devices[testbed.auctioneer].compute.seconds("head", flops) if flops else 0.0


def fold_seconds(spec: ModelSpec, testbed: Testbed, device: int, rows: int) -> float:
    """``device`` multiplying ``rows`` rows of the last map by fc1's matching columns
    (``Plan.fold_head``): its share of the head's first linear layer."""
    _, h, _ = spec.shape_at(spec.n_units)
    return testbed.devices[device].compute.piece([("head", fold_flops(spec) * rows // h)])


def stage_tasks(
    stage: Stage, spec: ModelSpec, testbed: Testbed, work: Workload, fold: bool = False
) -> list[Task]:
    """The parts of ``stage`` as tasks: slab bytes in (with the scale vectors a stage
    starting at a synchronisation point carries), seconds of compute, bytes out.
    ``fold``: the last stage of a plan that folds the head's first linear layer in
    (each part computes its partial sums and sends those)."""
    c_in = spec.shape_at(stage.start)[0]
    vec = scale_bytes(spec, stage.start)
    c_out = spec.shape_at(stage.stop)[0]
    out: list[Task] = []
    for p in stage.parts:
        w = work.work_region(stage.start, stage.stop, p.region)
        model = testbed.devices[p.device].compute
        secs = model.piece(w.unit_flops)
        remote = p.device != testbed.auctioneer
        r0, r1, c0, c1 = w.need
        in_b = spec.wire_bytes(stage.start, c_in * (r1 - r0) * (c1 - c0)) + vec if remote else 0
        out_b = spec.wire_bytes(stage.stop, c_out * p.region.area) if remote else 0
        if fold:
            secs += fold_seconds(spec, testbed, p.device, p.region.rows.size)
            out_b = fold_bytes(spec) if remote else 0
        label = f"[{stage.start},{stage.stop}) {p.region.rows.start}:{p.region.rows.stop}"
        out.append(Task(p.device, in_b, secs, out_b, label))
    return out


def head_seconds(spec: ModelSpec, testbed: Testbed) -> float:
    """The head on the auctioneer."""
    return testbed.devices[testbed.auctioneer].compute.piece([("head", head_flops(spec))])


def head_bytes(spec: ModelSpec) -> tuple[int, int]:
    """Bytes of the head's input (the whole last map) and of its output (the logits)."""
    c, h, w = spec.head.in_shape
    return spec.wire_bytes(spec.n_units, c * h * w), spec.head.num_classes * FLOAT32_BYTES


def head_at_seconds(spec: ModelSpec, testbed: Testbed, device: int) -> float:
    """From the last map assembled on the auctioneer to the logits there, with the head
    on ``device``."""
    if device == testbed.auctioneer:
        return head_seconds(spec, testbed)
    return remote_head_seconds(spec, testbed, device)


def remote_head_seconds(spec: ModelSpec, testbed: Testbed, device: int) -> float:
    """The head on ``device``: the last map there, the head, the logits back."""
    out_b, back_b = head_bytes(spec)
    link = testbed.link(device)
    run = testbed.devices[device].compute.piece([("head", head_flops(spec))])
    return link.seconds(out_b) + run + testbed.back_s(device) + link.seconds(back_b)


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
    via_auctioneer = 0
    ends: list[float] = []
    for first, last in segments(plan):
        fold = plan.folds_after(last)
        if first == last:
            st = plan.stages[first]
            tasks = stage_tasks(st, spec, testbed, work, fold)
            nbytes = sum(x.in_bytes + x.out_bytes for x in tasks)
            moved += nbytes
            via_auctioneer += nbytes
            pre = scale_seconds(spec, testbed, st.start)
            if events is not None and pre > 0:
                events.append(Event(testbed.auctioneer, "compute", t, t + pre, first, "scale"))
            t = run_stage(tasks, testbed, t + pre, st.schedule == "pull", events, first)
            ends.append(t)
            continue
        seg = run_segment(
            plan.stages[first : last + 1], spec, testbed, work, t, events, first, fold=fold
        )
        moved += seg.bytes_moved
        via_auctioneer += seg.auctioneer_bytes
        ends.extend(seg.stage_ends)
        t = seg.latency
    h, aid, k = plan.head_at, testbed.auctioneer, len(plan.stages)
    folded = fold_flops(spec) if plan.fold_head else 0
    head = testbed.devices[h].compute.piece([("head", head_flops(spec) - folded)])
    if h != aid:
        # The last map out to the head device, the logits back; nothing else is on the
        # links by then.
        link = testbed.link(h)
        out_b, back_b = head_bytes(spec)
        sent = t + link.seconds(out_b)
        back = sent + head + testbed.back_s(h) + link.seconds(back_b)
        if events is not None:
            events.append(Event(aid, "send", t, sent, k, "head map"))
            events.append(Event(h, "recv", t, sent, k, "head map"))
            events.append(Event(h, "compute", sent, sent + head, k, "head"))
            events.append(Event(h, "send", sent + head, back, k, "logits"))
            events.append(Event(aid, "recv", sent + head, back, k, "logits"))
        moved += out_b + back_b
        via_auctioneer += out_b + back_b
        return SimResult(back, moved, tuple(ends), tuple(events or ()), via_auctioneer)
    if events is not None and head > 0:
        events.append(Event(aid, "compute", t, t + head, k, "head"))
    return SimResult(t + head, moved, tuple(ends), tuple(events or ()), via_auctioneer)


_TX_REQ, _TX_DONE, _PART_DONE, _MID_DONE, _EDGE_DONE = 0, 1, 2, 3, 4
_IDLE, _MID_RUNNING, _MID_DONE_PHASE, _EDGE_RUNNING = 0, 1, 2, 3


@dataclass(frozen=True)
class _Tx:
    """One transfer of a segment: to part ``(stage, part)`` or, if ``part < 0``, a gather."""

    src: int
    dst: int
    nbytes: int
    stage: int
    part: int
    label: str


def run_segment(
    stages: Sequence[Stage],
    spec: ModelSpec,
    testbed: Testbed,
    work: Workload,
    t0: float = 0.0,
    events: list[Event] | None = None,
    stage0: int = 0,
    ready: Sequence[float] | None = None,
    fold: bool = False,
) -> SimResult:
    """Simulate a run of stages linked by halo boundaries from ``t0`` (no barrier inside).

    Returns, as a :class:`SimResult` without the head: when the last output strip
    is on the auctioneer (``latency``), bytes moved, bytes through the
    auctioneer's link, and each stage's end (its last part computed; for the last
    stage its last strip gathered). ``stage0`` numbers the stages in events.
    ``ready[d]``: device ``d`` computes nothing before then (queued work, as
    :func:`edgeci_p2p.auction.awas.predict_with_backlog` models backlogs). ``fold``:
    the last stage's parts also fold the head's first linear layer in and send their
    partial sums instead of their strips (``Plan.fold_head``).
    """
    aid = testbed.auctioneer
    shared = testbed.shared_medium
    n_dev = len(testbed.devices)
    bw = [testbed.link(d).bandwidth for d in range(n_dev)]
    rtt = [testbed.link(d).rtt for d in range(n_dev)]
    hop = [d.hop_s for d in testbed.devices]
    medium = t0
    up = [t0] * n_dev
    down = [t0] * n_dev
    last = len(stages) - 1

    # Every stage's row moves first: a part's cut depends on the rows it sends on.
    needs: list[list[tuple[int, int, int, int]]] = []
    for st in stages:
        needs.append([work.work_region(st.start, st.stop, p.region).need for p in st.parts])
    moves: list[list[RowMove]] = [[]] + [
        list(
            moves_between(
                stages[s - 1].parts, stages[s].parts, [n[:2] for n in needs[s]], stages[s].start
            )
        )
        for s in range(1, len(stages))
    ]

    # Per part: its compute as (edge seconds, middle seconds): the edges (rows sent on)
    # first when their input is here, else the middle first (core/pieces.py); a part
    # not cut is all "edge". lane: the device's previous part done (and, in the first
    # stage, its input slab here); halo: row moves not arrived yet.
    cut: list[list[tuple[float, float]]] = []
    lane_wait: list[list[int]] = []
    halo_wait: list[list[int]] = []
    phase: list[list[int]] = []  # _IDLE, _MID_RUNNING, _MID_DONE_PHASE, _EDGE_RUNNING
    halo_out: list[list[list[int]]] = []
    strip_out: list[list[list[int]]] = []
    txs: list[_Tx] = []
    lane_next: dict[tuple[int, int], tuple[int, int]] = {}  # (stage, part) -> device's next
    lane_last: dict[int, tuple[int, int]] = {}
    for s, st in enumerate(stages):
        c_in, _, w_in = spec.shape_at(st.start)
        _, _, w_out = spec.shape_at(st.stop)
        c_out = spec.shape_at(st.stop)[0]
        row_in = spec.wire_bytes(st.start, c_in * w_in)
        n = len(st.parts)
        cut.append([])
        lane_wait.append([0] * n)
        halo_wait.append([0] * n)
        phase.append([_IDLE] * n)
        halo_out.append([[] for _ in st.parts])
        strip_out.append([[] for _ in st.parts])
        for q, p in enumerate(st.parts):
            model = testbed.devices[p.device].compute
            rows = (p.region.rows.start, p.region.rows.stop)
            sent = [
                (m.rows.start, m.rows.stop)
                for m in (moves[s + 1] if s < last else ())
                if m.src == p.device
            ]
            if sent and p.region.cols.size == w_out:
                pieces = edge_first_pieces(work, st.start, st.stop, rows, sent)
            else:
                pieces = ()
            if len(pieces) > 1 and s > 0:
                own = next(
                    (x.region.rows for x in stages[s - 1].parts if x.device == p.device), None
                )
                if own is None or any(
                    not own.start <= pc.need[0] < pc.need[1] <= own.stop
                    for pc in pieces
                    if not pc.sends
                ):
                    pieces = ()  # the middle reads neighbours' rows too: it waits like the edges
            # Folding runs after the whole strip, so it lengthens whichever half ends it.
            extra = (
                fold_seconds(spec, testbed, p.device, p.region.rows.size)
                if fold and s == last
                else 0.0
            )
            if len(pieces) > 1:
                edge = sum(model.piece(pc.unit_flops) for pc in pieces if pc.sends)
                mid = sum(model.piece(pc.unit_flops) for pc in pieces if not pc.sends)
                cut[s].append((edge, mid + extra) if mid > 0 else (edge + extra, mid))
            else:
                rw = work.work_region(st.start, st.stop, p.region)
                cut[s].append((model.piece(rw.unit_flops) + extra, 0.0))
            prev = lane_last.get(p.device)
            if prev is not None:
                lane_next[prev] = (s, q)
                lane_wait[s][q] += 1
            lane_last[p.device] = (s, q)
            if s == 0 and p.device != aid:
                r0, r1, cc0, cc1 = needs[s][q]
                nbytes = spec.wire_bytes(st.start, c_in * (r1 - r0) * (cc1 - cc0))
                txs.append(_Tx(aid, p.device, nbytes, s, q, f"[{st.start},{st.stop}) slab"))
                lane_wait[s][q] += 1
            if s == last and p.device != aid:
                out_b = spec.wire_bytes(st.stop, c_out * p.region.area)
                if fold:
                    out_b = fold_bytes(spec)
                strip_out[s][q].append(len(txs))
                txs.append(_Tx(p.device, aid, out_b, s, -1, f"[{st.start},{st.stop}) strip"))
        if s > 0:
            src_part = {p.device: k for k, p in enumerate(stages[s - 1].parts)}
            dst_part = {p.device: k for k, p in enumerate(st.parts)}
            for m in moves[s]:
                q = dst_part[m.dst]
                halo_out[s - 1][src_part[m.src]].append(len(txs))
                txs.append(_Tx(m.src, m.dst, m.rows.size * row_in, s, q, _move_label(m)))
                halo_wait[s][q] += 1

    heap: list[tuple[float, int, int, int, int]] = []  # time, seq, kind, a, b
    seq = 0
    ends = [t0] * len(stages)
    moved = via_aid = 0

    def push(when: float, kind: int, a: int, b: int = 0) -> None:
        nonlocal seq
        heapq.heappush(heap, (when, seq, kind, a, b))
        seq += 1

    for k, x in enumerate(txs):
        if x.stage == 0 and x.part >= 0:
            push(t0, _TX_REQ, k)  # the scatter, in part order
    for q in range(len(stages[0].parts)):
        if lane_wait[0][q] == 0:
            push(t0, _TX_DONE, -1, q)  # nothing to wait for: start at t0

    def run(now: float, s: int, q: int, seconds: float, kind: int, what: str) -> None:
        d = stages[s].parts[q].device
        if ready is not None:
            now = max(now, ready[d])
        stop = now + seconds
        if events is not None:
            label = _part_label(stages[s], q) + what
            events.append(Event(d, "compute", now, stop, stage0 + s, label))
        push(stop, kind, s, q)

    def go(now: float, s: int, q: int) -> None:
        """The part's next step, if it can take one now."""
        if lane_wait[s][q] or phase[s][q] in (_MID_RUNNING, _EDGE_RUNNING):
            return
        edge, mid = cut[s][q]
        if halo_wait[s][q] == 0:
            phase_was = phase[s][q]
            phase[s][q] = _EDGE_RUNNING
            # After the middle, the edges end the part; before it, the middle follows.
            run(now, s, q, edge, _EDGE_DONE if phase_was == _IDLE and mid > 0 else _PART_DONE, "")
        elif phase[s][q] == _IDLE and mid > 0:
            phase[s][q] = _MID_RUNNING
            run(now, s, q, mid, _MID_DONE, " middle")

    def send_rows(now: float, s: int, q: int) -> None:
        for k in halo_out[s][q]:
            push(now, _TX_REQ, k)
        halo_out[s][q] = []

    while heap:
        now, _, kind, a, b = heapq.heappop(heap)
        if kind == _TX_REQ:
            x = txs[a]
            dur = x.nbytes / min(bw[x.src], bw[x.dst])
            if shared:
                begin = max(now, medium)
                medium = begin + dur
            else:
                begin = max(now, up[x.src], down[x.dst])
                up[x.src] = down[x.dst] = begin + dur
            arrive = begin + dur + max(rtt[x.src], rtt[x.dst]) / 2
            if x.stage > 0 and x.part >= 0:  # a halo row move: both loops pick it up
                arrive += hop[x.src] + hop[x.dst]
            moved += x.nbytes
            if aid in (x.src, x.dst):
                via_aid += x.nbytes
            if events is not None:
                events.append(Event(x.src, "send", begin, begin + dur, stage0 + x.stage, x.label))
                events.append(Event(x.dst, "recv", begin, arrive, stage0 + x.stage, x.label))
            push(arrive, _TX_DONE, a)
        elif kind == _TX_DONE:
            if a < 0:  # a first-stage part with every input at hand
                go(now, 0, b)
                continue
            x = txs[a]
            if x.part < 0:
                ends[x.stage] = max(ends[x.stage], now)
            elif x.stage == 0:
                lane_wait[0][x.part] -= 1  # its slab
                go(now, 0, x.part)
            else:
                halo_wait[x.stage][x.part] -= 1
                go(now, x.stage, x.part)
        elif kind == _MID_DONE:
            phase[a][b] = _MID_DONE_PHASE
            go(now, a, b)
        elif kind == _EDGE_DONE:  # edges first: send them, then the middle
            send_rows(now, a, b)
            phase[a][b] = _MID_RUNNING
            run(now, a, b, cut[a][b][1], _PART_DONE, " middle")
        else:
            s, q = a, b
            ends[s] = max(ends[s], now)
            send_rows(now, s, q)
            for k in strip_out[s][q]:
                push(now + testbed.back_s(stages[s].parts[q].device), _TX_REQ, k)
            nxt = lane_next.get((s, q))
            if nxt is not None:
                lane_wait[nxt[0]][nxt[1]] -= 1
                go(now, *nxt)
    for s in range(1, len(stages)):
        ends[s] = max(ends[s], ends[s - 1])
    return SimResult(ends[-1], moved, tuple(ends), (), via_aid)


def _move_label(m: RowMove) -> str:
    return f"halo @{m.boundary} {m.rows.start}:{m.rows.stop}"


def _part_label(st: Stage, q: int) -> str:
    r = st.parts[q].region
    return f"[{st.start},{st.stop}) {r.rows.start}:{r.rows.stop}"


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
        elif kind == _COMP_DONE:
            busy[d] = False
            start_compute(now, d)
            if d == aid or t.out_bytes == 0:
                end = max(end, now)
            else:  # its loop picks the output up, then sends it
                heapq.heappush(heap, (now + testbed.back_s(d), seq, _OUT_READY, k, d))
                seq += 1
        else:
            end = max(end, transfer(now, d, t.out_bytes, False))
    return owner, end

"""What every planner needs about one (model, testbed) pair: exact block costs (pure).

All planners are judged by one cost: the simulator's (:mod:`edgeci_p2p.core.sim`).
This module evaluates candidate stages with that same ``run_stage``, using the
O(1) strip tables of :mod:`edgeci_p2p.core.workload` for FLOPs and halo rows,
so a planner's prediction for a stage is exactly what the simulator will say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeci_p2p.core.cost import LinearFit, Testbed
from edgeci_p2p.core.geometry import proportional_strips
from edgeci_p2p.core.plan import Plan, Stage, single_stage, strip_stage
from edgeci_p2p.core.sim import Task, head_seconds, run_stage, scale_bytes, scale_seconds
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import StripTable, Workload


@dataclass(frozen=True)
class Affine:
    """A device's per-block times as functions of its strip height r (rows).

    ``x1*r + x0``: input slab on the radio; ``c1*r + c0``: compute;
    ``y1*r + y0``: output strip on the radio; ``lat``: both one-way latencies;
    ``back``: the device's loop picking its strip up before it sends it
    (:meth:`~edgeci_p2p.core.cost.Testbed.back_s`).
    """

    x1: float
    x0: float
    c1: float
    c0: float
    y1: float
    y0: float
    lat: float
    back: float = 0.0

    @property
    def per_row(self) -> float:
        return self.x1 + self.c1 + self.y1

    @property
    def fixed_wait(self) -> float:
        """What a strip waits for beyond bytes and compute: latencies and the pick-up."""
        return self.lat + self.back


class Context:
    """Exact, memoised block costs of one model on one testbed."""

    def __init__(self, spec: ModelSpec, testbed: Testbed) -> None:
        self.spec = spec
        self.testbed = testbed
        self.table = StripTable(spec)
        self.work = Workload(spec)
        self.n = spec.n_units
        self.aid = testbed.auctioneer
        self.n_dev = len(testbed.devices)
        # per device, per kind of the table: (a, b) of the linear fit
        self._ab = [[_fit_ab(d.compute.fits, k) for k in self.table.kinds] for d in testbed.devices]
        self._piece = [d.compute.piece_s for d in testbed.devices]
        self._shapes = [spec.shape_at(b) for b in range(self.n + 1)]
        # aggregate speed per kind if every device worked at once (for lower bounds)
        self._all_speed = [
            sum(1.0 / self._ab[d][k][0] for d in range(self.n_dev))
            for k in range(len(self.table.kinds))
        ]
        self._affine: dict[tuple[int, int, int], Affine] = {}
        # A block starting at a synchronisation point: the auctioneer makes the scale
        # vectors first and sends them with every remote slab (core/sim.py).
        self._pre = [scale_seconds(spec, testbed, b) for b in range(self.n)]
        self._vec = [scale_bytes(spec, b) for b in range(self.n)]
        self._tasks: dict[tuple[int, int, int, int, int], Task] = {}

    # ---- exact costs ------------------------------------------------------------------------

    def compute_seconds(self, device: int, i: int, j: int, a: int, b: int) -> float:
        """Seconds for ``device`` to compute rows ``[a, b)`` of units ``[i, j)`` (full width),
        as one piece of work."""
        t = 0.0
        ab = self._ab[device]
        for (fa, fb), f, cnt in zip(
            ab, self.table.flops(i, j, a, b), self.table.unit_counts(i, j), strict=True
        ):
            if f > 0:
                t += fa * f + fb * cnt
        return t + self._piece[device] if t > 0 else 0.0

    def strip_task(self, device: int, i: int, j: int, a: int, b: int) -> Task:
        """Rows ``[a, b)`` of units ``[i, j)`` on ``device`` as a task (memoised)."""
        key = (device, i, j, a, b)
        got = self._tasks.get(key)
        if got is None:
            got = self._tasks[key] = self._strip_task(device, i, j, a, b)
        return got

    def _strip_task(self, device: int, i: int, j: int, a: int, b: int) -> Task:
        c_in, _, w_in = self._shapes[i]
        c_out, _, w_out = self._shapes[j]
        secs = self.compute_seconds(device, i, j, a, b)
        if device == self.aid:
            return Task(device, 0, secs, 0)
        lo, hi = self.table.need_rows(i, j, a, b)
        return Task(
            device,
            self.spec.wire_bytes(i, c_in * w_in * (hi - lo)) + self._vec[i],
            secs,
            self.spec.wire_bytes(j, c_out * w_out * (b - a)),
        )

    def strips_cost(self, i: int, j: int, edges: Sequence[int], devices: Sequence[int]) -> float:
        """Exact makespan of strips ``[edges[k], edges[k+1])`` on ``devices[k]`` (push order)."""
        tasks = [
            self.strip_task(d, i, j, a, b)
            for a, b, d in zip(edges, edges[1:], devices, strict=False)
            if b > a
        ]
        return run_stage(tasks, self.testbed, self._pre[i])

    def own_link_seconds(self, device: int, i: int, j: int, a: int, b: int) -> float:
        """Rows ``[a, b)`` of units ``[i, j)`` on ``device`` as if its link were its own.

        Its slab in and strip out at the full rate of its link, plus one round trip,
        plus compute; the auctioneer moves no bytes. No shared medium, no queueing:
        the stand-alone time AOFL and EdgeLD plan with, and AWAS's strip estimate.
        """
        t = self.strip_task(device, i, j, a, b)
        if device == self.aid:
            return t.seconds
        link = self.testbed.links[device]
        back = self.testbed.back_s(device)
        return (t.in_bytes + t.out_bytes) / link.bandwidth + link.rtt + back + t.seconds

    def single_cost(self, device: int, i: int, j: int) -> float:
        """Block ``[i, j)`` whole on ``device``: :meth:`own_link_seconds` of all its rows."""
        return self._pre[i] + self.own_link_seconds(device, i, j, 0, self.spec.shape_at(j)[1])

    def lower_bound(self, i: int, j: int) -> float:
        """No split of block ``[i, j)`` can beat all devices computing it with no overhead."""
        h = self._shapes[j][1]
        return sum(
            f / v for f, v in zip(self.table.flops(i, j, 0, h), self._all_speed, strict=True)
        )

    def head_seconds(self) -> float:
        return head_seconds(self.spec, self.testbed)

    # ---- per-row models ---------------------------------------------------------------------

    def affine(self, device: int, i: int, j: int) -> Affine:
        """Linear-in-rows model of an interior strip of units ``[i, j)`` on ``device``."""
        key = (device, i, j)
        got = self._affine.get(key)
        if got is not None:
            return got
        h = self.spec.shape_at(j)[1]
        r1 = max(1, h // 4)
        r2 = max(r1 + 1, h // 2)
        if r2 > h:  # a one-row map: no per-row slope to speak of
            t = self.strip_task(device, i, j, 0, h)
            link = self.testbed.link(device)
            got = Affine(
                0.0,
                t.in_bytes / link.bandwidth,
                0.0,
                t.seconds,
                0.0,
                0.0,
                link.rtt,
                self.testbed.back_s(device),
            )
        else:
            a1 = (h - r1) // 2
            a2 = (h - r2) // 2
            t1 = self.strip_task(device, i, j, a1, a1 + r1)
            t2 = self.strip_task(device, i, j, a2, a2 + r2)
            link = self.testbed.link(device)
            bw = link.bandwidth
            dr = r2 - r1
            x1 = (t2.in_bytes - t1.in_bytes) / bw / dr
            c1 = (t2.seconds - t1.seconds) / dr
            y1 = (t2.out_bytes - t1.out_bytes) / bw / dr
            got = Affine(
                x1,
                t1.in_bytes / bw - x1 * r1,
                c1,
                t1.seconds - c1 * r1,
                y1,
                t1.out_bytes / bw - y1 * r1,
                0.0 if device == self.aid else link.rtt,
                self.testbed.back_s(device),
            )
        self._affine[key] = got
        return got

    # ---- building plans -----------------------------------------------------------------------

    def strips_stage(self, i: int, j: int, edges: Sequence[int], devices: Sequence[int]) -> Stage:
        return strip_stage(self.spec, i, j, list(edges[1:-1]), list(devices))

    def single_stage(self, i: int, j: int, device: int) -> Stage:
        return single_stage(self.spec, i, j, device)

    def make_plan(
        self,
        strategy: str,
        stages: Sequence[Stage],
        predicted: float | None = None,
        notes: dict[str, object] | None = None,
    ) -> Plan:
        return Plan(
            model=self.spec.name,
            strategy=strategy,
            testbed=self.testbed.name,
            devices=tuple(self.testbed.names),
            stages=tuple(stages),
            auctioneer=self.aid,
            predicted=predicted,
            notes=dict(notes or {}),
        )


def _fit_ab(fits: Mapping[str, LinearFit], kind: str) -> tuple[float, float]:
    f = fits.get(kind) or fits.get("conv")
    if f is None:
        raise KeyError(f"compute model has no fit for {kind!r} (nor 'conv')")
    return f.a, f.b


def strips_by_weight(
    height: int, devices: Sequence[int], weights: Sequence[float]
) -> tuple[list[int], list[int]]:
    """Strip edges with heights proportional to ``weights`` (largest remainder), and
    the devices that got a non-empty strip."""
    spans = proportional_strips(height, weights)
    total = sum(weights)
    exact = [height * w / total for w in weights]
    sizes = [int(x) for x in exact]
    rank = sorted(range(len(exact)), key=lambda k: exact[k] - sizes[k], reverse=True)
    for k in rank[: height - sum(sizes)]:
        sizes[k] += 1
    devs = [d for d, n in zip(devices, sizes, strict=True) if n > 0]
    if len(devs) != len(spans):
        raise AssertionError("strip rounding disagrees with geometry.proportional_strips")
    return [0] + [s.stop for s in spans], devs

"""How far each device of an auctioneer's own plans runs from its share, against the
others: a correction of every bid, learnt from the plans it ran (pure).

A plan sizes each device's strips from its bid, so that all of them finish a stage
together. Each bid is calibrated on its own (``policy/calibration.py``: a peer's pieces
against its profile; ``policy/loop_share.py``: the auctioneer's loop), within bands,
and the errors left are not the same for every device. On the emulated cluster the
auctioneer's pieces ran 7-30% (median 14%) longer against their plan than its
helpers' did, in every calibrated run of the twenty-ninth and thirtieth sessions (the
traces' compute spans against the simulator's compute on the request's own bids; with
the calibrations off, within 6%). So the auctioneer set the pace of every stage while
its helpers waited for its rows, and the latency followed its CPU.

The auctioneer sees each device's compute in every one of its own distributed
requests (the seconds each strip job or tile reports, its own included) and what the
plan predicted for it (the simulator's compute on the bids the request was priced
with). :class:`Balance` learns, per strategy and device, the factor that would have
made every device's ratio of measured to predicted compute the same: its ratio over
the median device's, times the factor the request was priced with. The auctioneer
then prices each bid's compute at that factor in the strategy's rounds
(``aio/bid_desk.py``). The median device keeps 1, so the bids' own level (their
calibrations) is what the predictions stay on.

Like the calibrations, a factor moves only past a band and onto a grid: each change
is a new plan (made off the requests' path).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.units import ModelSpec

__all__ = ["Balance", "predicted_compute"]


@dataclass
class Balance:
    """Per (strategy, device): the factor its bid's compute is priced at in this
    auctioneer's rounds (``in_force``), learnt from its own distributed requests."""

    weight: float = 0.3
    """Weight of each request in the running mean (of the factor's log)."""
    skip: int = 2
    """Requests of a strategy left out at first (cold: first allocations, connections)."""
    band: float = 0.05
    """A factor in force changes when the running mean differs from it by more."""
    grid: float = 0.025
    """A factor in force is a multiple of this."""
    lowest: float = 0.67
    highest: float = 1.5
    """Bounds on a factor: beyond them something other than a misjudged share is wrong
    (a stalled peer), which the bans and the judge of outcomes deal with."""
    min_predicted_s: float = 0.01
    """Devices with less predicted compute in a request are not judged by it: their
    few short pieces are mostly CFS periods and hops."""
    shapes_kept: int = 256
    """Plan shapes remembered as run once (their first run is cold)."""
    mean_log: dict[tuple[str, str], float] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    in_force: dict[tuple[str, str], float] = field(default_factory=dict)
    _shapes: set[Hashable] = field(default_factory=set)

    def factor(self, strategy: str, node: str) -> float:
        """How many times its bid's compute ``node`` is priced at in ``strategy``'s rounds."""
        return self.in_force.get((strategy, node), 1.0)

    def observe(
        self, strategy: str, shape: Hashable, runs: Mapping[str, tuple[float, float]]
    ) -> dict[str, float]:
        """One of this node's own distributed requests of ``strategy`` ran a plan of
        ``shape``: per device, (measured, predicted) compute seconds, the prediction on
        the bids as this request priced them. Returns the factors that changed."""
        if shape not in self._shapes:
            # A plan's first run pays for its new shapes on every device, unevenly
            # (oneDNN primitives and buffers): no sample (policy/outcomes.py, too).
            if len(self._shapes) >= self.shapes_kept:
                self._shapes.clear()
            self._shapes.add(shape)
            return {}
        judged = {
            n: self.factor(strategy, n) * m / p
            for n, (m, p) in runs.items()
            if p >= self.min_predicted_s and m > 0.0
        }
        if len(judged) < 2:
            return {}
        n = self.seen.get(strategy, 0) + 1
        self.seen[strategy] = n
        if n <= self.skip:
            return {}
        # factor x measured/predicted is the device's own speed against its bid: the
        # factor that balances is that over the median device's.
        ref = statistics.median(judged.values())
        changed: dict[str, float] = {}
        for node, slow in judged.items():
            key = (strategy, node)
            implied = math.log(slow / ref)
            old = self.mean_log.get(key)
            mean = implied if old is None else (1.0 - self.weight) * old + self.weight * implied
            self.mean_log[key] = mean
            now = self.factor(strategy, node)
            if abs(mean - math.log(now)) <= math.log1p(self.band):
                continue
            snapped = round(round(math.exp(mean) / self.grid) * self.grid, 6)
            new = min(self.highest, max(self.lowest, snapped))
            if new != now:
                self.in_force[key] = new
                changed[node] = new
        return changed


def predicted_compute(plan: Plan, spec: ModelSpec, testbed: Testbed) -> list[float]:
    """Per plan device, the seconds the simulator has it compute for ``plan`` on
    ``testbed``, without the fixed cost per piece: what its worker spends on its strip
    jobs or tiles when they run as planned. The fixed cost is mostly the hop back to
    the event loop (``policy/calibration.py``), which the workers' seconds leave out:
    on a capped peer it is longest where the worker would idle anyway, waiting for its
    neighbours' rows, and counted it made the peers that wait the most look the slowest
    (a first version priced the 0.13-core peer up to 1.5x, and the auctioneer, which set
    the pace, down). The auctioneer's own head and scale vectors are left out (no tile
    reports them); a head placed on another peer stays in, as its head job reports it."""
    bare = tuple(replace(d, compute=d.compute.with_piece(0.0)) for d in testbed.devices)
    sim = simulate(plan, spec, replace(testbed, devices=bare))
    busy = [0.0] * len(plan.devices)
    for e in sim.events:
        own_head = e.label == "head" and e.device == plan.auctioneer
        if e.lane == "compute" and e.label != "scale" and not own_head:
            busy[e.device] += e.stop - e.start
    return busy

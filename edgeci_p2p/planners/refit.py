"""A plan's strips re-split for devices whose speeds moved (pure).

An auctioneer under back-to-back requests runs the plan it has while its peers'
calibrations move (``auction/decider.py``): a full plan for the new figures costs
0.4-0.6 s of one core for VGG-16 (several times that on a capped peer), and planned
beside the requests it cost them more than it saved. So one plan served a whole
benchmark run, 9-27% slower by its own bids than a plan made for them
(docs/cluster-benchmark.md, twenty-sixth session).

Most of that gap is the strips' heights: a peer whose calibration says it got 20%
slower still gets the rows it was given when it was faster. :func:`rescaled` keeps
the plan's stages, devices, boundaries and head, and re-splits each stage of
full-width row strips in proportion to each strip's rows times its device's speed
change (old seconds per conv FLOP over new), on the planners' row grid. It costs a
few hundred microseconds; the caller simulates it against the plan as it is and keeps
the faster. On kept traces' bids it got back a third to two thirds of the gap to a
fresh plan where the bids had moved most (VGG-16's halo plan, priced 654 ms as it
was, 537 rescaled, 491 fresh), as much as stepping strip edges on the simulator
(``halo.refine_strips``) did with 40 simulations, at a twentieth of the CPU.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan, Stage, strip_stage
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.dpfl import DEFAULT_RESOLUTION, grid_step, round_to_grid

REFERENCE_FLOPS = 1e9
"""The conv work whose seconds compare a device's speed under two sets of figures."""


def _seconds(tb: Testbed, name: str) -> float:
    d = tb.devices[tb.names.index(name)]
    return d.compute.seconds("conv", REFERENCE_FLOPS)


def rescaled(
    plan: Plan,
    spec: ModelSpec,
    made_for: Testbed,
    now: Testbed,
    resolution: int = DEFAULT_RESOLUTION,
) -> Plan:
    """``plan`` (made for the figures of ``made_for``) with each stage of full-width row
    strips, one per device, re-split for the figures of ``now``; a stage whose new
    split would empty a strip, or which is not such strips, is kept as it is. Both
    testbeds must name every device of the plan."""
    stages: list[Stage] = []
    for st in plan.stages:
        stages.append(_rescaled_stage(st, plan, spec, made_for, now, resolution))
    return replace(plan, stages=tuple(stages))


def _rescaled_stage(
    st: Stage, plan: Plan, spec: ModelSpec, made_for: Testbed, now: Testbed, resolution: int
) -> Stage:
    _, h, w = spec.shape_at(st.stop)
    parts = sorted(st.parts, key=lambda p: p.region.rows.start)
    devices = [p.device for p in parts]
    if len(devices) < 2 or len(set(devices)) != len(devices):
        return st
    if any(p.region.cols.start != 0 or p.region.cols.stop != w for p in parts):
        return st
    weights = []
    for p in parts:
        name = plan.devices[p.device]
        weights.append(p.region.rows.size * _seconds(made_for, name) / _seconds(now, name))
    total = sum(weights)
    edges = round_to_grid([x * h / total for x in weights], h, grid_step(h, resolution))
    if any(a >= b for a, b in pairwise(edges)):
        return st
    split = strip_stage(spec, st.start, st.stop, edges[1:-1], devices)
    return replace(split, transfer=st.transfer, schedule=st.schedule)

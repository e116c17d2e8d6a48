"""Baseline ``edgeld``: EdgeLD's OCBP partitioning (Xue, Fang et al., HPCC 2020).

Blocks are the convolutions between pooling layers (each block ends with its
pool). Within a block, output rows start proportional to each device's
capacity (conv GFLOP/s) and one row at a time moves from the device with the
longest predicted time to the one with the shortest, until the times are
within a tolerance. A device's predicted time is EdgeLD's: its slab in, its
compute (halo included) and its strip out, as if its link were its own.

Choices left open, made in EdgeLD's favour:
* ResNet has no pools between its stages; besides "between pools" we also try
  cutting wherever the map's resolution changes (the stride-2 blocks) and keep
  whichever segmentation simulates faster;
* the tolerance is zero: rows keep moving while that lowers the longest time;
* strips go fastest device first (the auctioneer's own strip moves no bytes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan, Stage
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.context import Context, strips_by_weight
from edgeci_p2p.planners.modnn import capacity, speed_order


def pool_cuts(spec: ModelSpec) -> list[int]:
    """Boundaries right after each pool unit, plus the end."""
    cuts = [u.index + 1 for u in spec.units if u.kind == "pool"]
    return sorted(set([*cuts, spec.n_units]))


def resolution_cuts(spec: ModelSpec) -> list[int]:
    """Boundaries where the next unit changes the map's resolution, plus the end."""
    cuts = [b for b in range(1, spec.n_units) if spec.shape_at(b)[1:] != spec.shape_at(b + 1)[1:]]
    return sorted(set([*cuts, spec.n_units]))


def ocbp(ctx: Context, i: int, j: int, order: Sequence[int], weights: Sequence[float]) -> Stage:
    h = ctx.spec.shape_at(j)[1]
    edges, devs = strips_by_weight(h, order, weights)
    sizes = [b - a for a, b in itertools.pairwise(edges)]

    def times(sz: Sequence[int]) -> list[float]:
        out, a = [], 0
        for d, n in zip(devs, sz, strict=True):
            out.append(ctx.own_link_seconds(d, i, j, a, a + n) if n else 0.0)
            a += n
        return out

    cur = times(sizes)
    for _ in range(4 * h):
        slow = max(range(len(devs)), key=lambda k: cur[k])
        fast = min(range(len(devs)), key=lambda k: cur[k])
        if slow == fast or sizes[slow] == 0:
            break
        trial = list(sizes)
        trial[slow] -= 1
        trial[fast] += 1
        t = times(trial)
        if max(t) >= max(cur):
            break
        sizes, cur = trial, t
    edges = [0]
    kept = []
    for d, n in zip(devs, sizes, strict=True):
        if n:
            edges.append(edges[-1] + n)
            kept.append(d)
    return ctx.strips_stage(i, j, edges, kept)


def plan_edgeld(spec: ModelSpec, testbed: Testbed, ctx: Context | None = None) -> Plan:
    ctx = ctx or Context(spec, testbed)
    order = speed_order(testbed)
    weights = [capacity(testbed, d) for d in order]
    best: tuple[float, Plan] | None = None
    for cuts in dict.fromkeys([tuple(pool_cuts(spec)), tuple(resolution_cuts(spec))]):
        stages: list[Stage] = []
        start = 0
        for stop in cuts:
            stages.append(ocbp(ctx, start, stop, order, weights))
            start = stop
        plan = ctx.make_plan("edgeld", stages, notes={"cuts": list(cuts)})
        lat = simulate(plan, spec, testbed, ctx.work, record=False).latency
        if best is None or lat < best[0]:
            best = (lat, plan)
    assert best is not None
    return best[1]

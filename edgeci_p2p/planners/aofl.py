"""Baseline ``aofl``: AOFL (Zhou et al., SEC 2019), adaptive fused-layer parallelism.

A dynamic programme over fused blocks solved by memoised recursion,
``F(j) = min_i F(i) + cost(i, j)``; within a block, partition sizes are set so
that compute plus transfer time is equal across devices, each device's
transfer time computed over its own link (static capacities, no model of a
shared radio: every link is assumed to carry its slab at full rate at the same
time). The plan is chosen with AOFL's own cost model; the simulator then
runs it on the real (modelled) medium.

Choices left open, made in AOFL's favour: halo rows are counted in its cost
model; a block may run on one device, and devices whose equal-time share comes
out non-positive are dropped (so it never uses a device that cannot help in its
own model); strip edges on single rows.
"""

from __future__ import annotations

import sys
from functools import cache

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan, Stage
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.dpfl import round_to_grid
from edgeci_p2p.planners.modnn import speed_order


def aofl_block(ctx: Context, i: int, j: int) -> tuple[float, tuple[int, ...], tuple[int, ...]]:
    """(AOFL-predicted time, edges, devices) of block ``[i, j)``."""
    h = ctx.spec.shape_at(j)[1]
    best: tuple[float, tuple[int, ...], tuple[int, ...]] = min(
        (ctx.own_link_seconds(d, i, j, 0, h), (0, h), (d,)) for d in range(ctx.n_dev)
    )
    devs = speed_order(ctx.testbed)
    while len(devs) >= 2 and h >= 2:
        # t_d(r) = alpha_d * r + beta_d = T for all d, sum r = h
        ab = []
        for d in devs:
            af = ctx.affine(d, i, j)
            ab.append((af.per_row, af.x0 + af.c0 + af.y0 + af.fixed_wait))
        if any(a <= 0 for a, _ in ab):
            break
        t = (h + sum(b / a for a, b in ab)) / sum(1 / a for a, _ in ab)
        rows = [(t - b) / a for a, b in ab]
        worst = min(range(len(devs)), key=lambda k: rows[k])
        if rows[worst] < 0.5:
            devs = devs[:worst] + devs[worst + 1 :]
            continue
        edges = round_to_grid(rows, h, 1)
        pairs = [(a, b, d) for a, b, d in zip(edges, edges[1:], devs, strict=False) if b > a]
        pred = max(ctx.own_link_seconds(d, i, j, a, b) for a, b, d in pairs)
        if pred < best[0]:
            best = (pred, (0, *(b for _, b, _ in pairs)), tuple(d for _, _, d in pairs))
        break
    return best


def plan_aofl(spec: ModelSpec, testbed: Testbed, ctx: Context | None = None) -> Plan:
    ctx = ctx or Context(spec, testbed)
    n = ctx.n

    @cache
    def best_to(j: int) -> tuple[float, tuple[tuple[int, int], ...]]:
        """AOFL's memoised recursion: cheapest way to produce boundary ``j``."""
        if j == 0:
            return 0.0, ()
        out: tuple[float, tuple[tuple[int, int], ...]] | None = None
        for i in range(j):
            prev, blocks = best_to(i)
            c = prev + aofl_block(ctx, i, j)[0]
            if out is None or c < out[0]:
                out = (c, (*blocks, (i, j)))
        assert out is not None
        return out

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * n + 100))
    try:
        cost, blocks = best_to(n)
    finally:
        sys.setrecursionlimit(limit)
    stages: list[Stage] = []
    for i, j in blocks:
        _, edges, devs = aofl_block(ctx, i, j)
        stages.append(ctx.strips_stage(i, j, edges, devs))
    return ctx.make_plan(
        "aofl", stages, predicted=cost + ctx.head_seconds(), notes={"own_model": True}
    )

"""Baseline ``deepthings``: DeepThings' Fused Tile Partitioning (Zhao et al., TCAD 2018).

The first ``N`` units are fused; their output map is cut into an equal
``M x M`` grid of tiles (no heterogeneity model: tiles are the same size for
every device); idle devices pull tiles (work stealing) from the gateway, which
holds the input; the rest of the model runs on the gateway (the auctioneer).

Choices the paper leaves open, made in DeepThings' favour:
* ``N`` and ``M`` are not fixed by the method (the paper fuses the first 16
  YOLOv2 layers and tries 3x3 to 5x5 grids): we take the ``(N, M)`` with the
  lowest simulated latency, ``N`` over every cut point, ``M`` in 2..5;
* the gateway pulls tiles as well, and a device asks for its next tile as soon as
  it starts the current one (one tile of look-ahead hides the transfer);
* tile ``k`` goes to whoever asks first, exactly as the simulator replays it.
"""

from __future__ import annotations

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.geometry import grid, proportional_strips
from edgeci_p2p.core.plan import Part, Plan, Stage
from edgeci_p2p.core.sim import assign_by_pulling, run_stage, stage_tasks
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.context import Context

GRIDS = (2, 3, 4, 5)


def ftp_stage(ctx: Context, n_fused: int, m: int) -> Stage | None:
    """The fused-tile stage for units ``[0, n_fused)`` on an ``m x m`` grid, tiles pulled."""
    spec, testbed = ctx.spec, ctx.testbed
    _, h, w = spec.shape_at(n_fused)
    if h < m or w < m:
        return None
    rows = [s.stop for s in proportional_strips(h, [1.0] * m)][:-1]
    cols = [s.stop for s in proportional_strips(w, [1.0] * m)][:-1]
    tiles = grid(h, w, rows, cols)
    devices = list(range(ctx.n_dev))
    per_device = [
        stage_tasks(Stage(0, n_fused, tuple(Part(t, d) for t in tiles)), spec, testbed, ctx.work)
        for d in devices
    ]
    options = [[per_device[d][k] for d in devices] for k in range(len(tiles))]
    owner, _ = assign_by_pulling(options, testbed, devices)
    return Stage(
        0, n_fused, tuple(Part(t, d) for t, d in zip(tiles, owner, strict=True)), schedule="pull"
    )


def plan_deepthings(spec: ModelSpec, testbed: Testbed, ctx: Context | None = None) -> Plan:
    ctx = ctx or Context(spec, testbed)
    best: tuple[float, list[Stage], int, int] | None = None
    for n_fused in range(1, ctx.n + 1):
        rest = 0.0 if n_fused == ctx.n else ctx.single_cost(ctx.aid, n_fused, ctx.n)
        for m in GRIDS:
            st = ftp_stage(ctx, n_fused, m)
            if st is None:
                continue
            ftp = run_stage(stage_tasks(st, spec, testbed, ctx.work), testbed, pull=True)
            cost = ftp + rest
            if best is None or cost < best[0]:
                stages = [st]
                if n_fused < ctx.n:
                    stages.append(ctx.single_stage(n_fused, ctx.n, ctx.aid))
                best = (cost, stages, n_fused, m)
    assert best is not None, "every model has a map of at least 2x2 somewhere"
    cost, stages, n_fused, m = best
    return ctx.make_plan(
        "deepthings",
        stages,
        predicted=cost + ctx.head_seconds(),
        notes={"fused_units": n_fused, "grid": m},
    )

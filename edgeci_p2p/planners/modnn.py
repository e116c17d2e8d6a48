"""Baseline ``modnn`` (Mao et al., DATE 2017): layer-by-layer partitioning.

Every unit is its own stage: its output rows are split into strips sized by
compute capability only (each device's conv speed, ``1 / a_conv``), every
device takes part, and the whole output map is gathered at the auctioneer and
re-split for the next layer. Transfer costs and halo rows do not influence the
split, as in MoDNN's BODP partitioner.

Choices the paper leaves open, made in MoDNN's favour: a unit (a conv with its
BN/ReLU, or a whole BasicBlock) counts as one layer, so there are fewer
synchronisations than per-torch-layer; strips go fastest device first (the
auctioneer's own strip needs no transfer and starts at once).
"""

from __future__ import annotations

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan, Stage
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.context import Context, strips_by_weight


def speed_order(testbed: Testbed) -> list[int]:
    """Devices by conv speed, fastest first (the auctioneer first among equals)."""
    return sorted(
        range(len(testbed.devices)),
        key=lambda d: (-capacity(testbed, d), d != testbed.auctioneer, d),
    )


def capacity(testbed: Testbed, device: int) -> float:
    """Relative compute capability: GFLOP/s on convs (the fit's slope)."""
    return testbed.devices[device].compute.fits["conv"].gflops


def plan_modnn(spec: ModelSpec, testbed: Testbed, ctx: Context | None = None) -> Plan:
    ctx = ctx or Context(spec, testbed)
    order = speed_order(testbed)
    weights = [capacity(testbed, d) for d in order]
    stages: list[Stage] = []
    for u in range(spec.n_units):
        h = spec.shape_at(u + 1)[1]
        edges, devs = strips_by_weight(h, order, weights)
        stages.append(ctx.strips_stage(u, u + 1, edges, devs))
    return ctx.make_plan("modnn", stages)

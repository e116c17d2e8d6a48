"""Baseline ``local``: the whole model on the best single device (including moving the
input there and the last map back to the auctioneer for the head)."""

from __future__ import annotations

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.context import Context


def plan_local(spec: ModelSpec, testbed: Testbed, ctx: Context | None = None) -> Plan:
    ctx = ctx or Context(spec, testbed)
    costs = [(ctx.single_cost(d, 0, ctx.n), d) for d in range(ctx.n_dev)]
    cost, best = min(costs)
    return ctx.make_plan(
        "local", [ctx.single_stage(0, ctx.n, best)], predicted=cost + ctx.head_seconds()
    )

"""Planners (pure): every strategy turns (model spec, testbed) into a :class:`Plan`.

``edgeci`` is DPFL (:mod:`.dpfl`); ``edgeci-halo`` adds strip-resident segments with
peer-to-peer halo exchange (:mod:`.halo`); ``local``, ``modnn``, ``deepthings``,
``edgeld`` and ``aofl`` are the baselines of BRIEF 2.5, each in its own module
with a docstring naming the choices made in its favour. Our two strategies also
place the head (:mod:`.head`); the baselines run it on the auctioneer.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.aofl import plan_aofl
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.deepthings import plan_deepthings
from edgeci_p2p.planners.dpfl import plan_edgeci
from edgeci_p2p.planners.edgeld import plan_edgeld
from edgeci_p2p.planners.halo import plan_edgeci_halo
from edgeci_p2p.planners.head import place_head
from edgeci_p2p.planners.local import plan_local
from edgeci_p2p.planners.modnn import plan_modnn

Planner = Callable[[ModelSpec, Testbed, Context | None], Plan]

PLANNERS: dict[str, Planner] = {
    "edgeci": lambda s, t, c: place_head(plan_edgeci(s, t, ctx=c), s, t),
    "edgeci-halo": lambda s, t, c: place_head(plan_edgeci_halo(s, t, ctx=c), s, t),
    "local": lambda s, t, c: plan_local(s, t, c),
    "modnn": lambda s, t, c: plan_modnn(s, t, c),
    "deepthings": lambda s, t, c: plan_deepthings(s, t, c),
    "edgeld": lambda s, t, c: plan_edgeld(s, t, c),
    "aofl": lambda s, t, c: plan_aofl(s, t, c),
}
STRATEGIES: tuple[str, ...] = tuple(PLANNERS)
OURS: tuple[str, ...] = ("edgeci", "edgeci-halo")
STRIP_RESIDENT: frozenset[str] = frozenset({"edgeci-halo"})
"""Strategies whose plans keep strips on their peers (strip jobs, halo rows)."""
BASELINES: tuple[str, ...] = tuple(s for s in STRATEGIES if s not in OURS)


def plan(strategy: str, spec: ModelSpec, testbed: Testbed, ctx: Context | None = None) -> Plan:
    """Plan ``spec`` on ``testbed`` with the named strategy (``ctx`` shares caches)."""
    try:
        planner = PLANNERS[strategy]
    except KeyError:
        raise ValueError(
            f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}"
        ) from None
    if ctx is not None and (ctx.spec is not spec or ctx.testbed is not testbed):
        raise ValueError("planning context belongs to another model or testbed")
    return planner(spec, testbed, ctx)

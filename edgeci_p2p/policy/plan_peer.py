"""Which peer plans a stale round for this auctioneer (pure).

A background plan (``aio/refresh.py``) takes 0.3-1.6 s of CPU. In the auctioneer's own
planning child it comes out of the auctioneer's quota, which on the emulated cluster is
the busiest of the four (its CPU per request over its share is the request's latency,
within 8%); held back until the daemon idles, the plan in use grew 9-26% slower than a
fresh one by its own bids. A peer the plan at hand leaves idle can make it instead: the
one with the most spare CPU, as the plan at hand predicts it (every peer it leaves out
is all spare; the fastest of those first).
"""

from __future__ import annotations

from collections.abc import Collection

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.units import ModelSpec

REFERENCE_FLOPS = 1e9
"""Speeds are compared as the seconds of this many conv FLOPs."""


def spare_peer(
    plan: Plan | None,
    testbed: Testbed | None,
    spec: ModelSpec,
    peers: Collection[str],
    me: str,
) -> str | None:
    """The peer among ``peers`` (bidders of the round, not ``me``) that would plan
    soonest on the CPU the plan at hand leaves it: (its idle seconds in the plan's
    simulated run) over (its seconds per GFLOP of conv), most first. A peer of the
    testbed the plan leaves out is idle for the whole run; a peer the testbed does
    not know (no bid in the plan's round) is not chosen. None: no such peer."""
    if plan is None or testbed is None:
        return None
    names = list(testbed.names)
    if len(plan.devices) != len(names):
        return None
    run = simulate(plan, spec, testbed)
    span = run.latency
    best: tuple[float, str] | None = None
    for d, name in enumerate(names):
        if name == me or name not in peers:
            continue
        idle = max(span - run.busy(d), 0.0)
        per_gflop = testbed.devices[d].compute.seconds("conv", REFERENCE_FLOPS)
        score = idle / max(per_gflop, 1e-12)
        if best is None or score > best[0] or (score == best[0] and name < best[1]):
            best = (score, name)
    return None if best is None else best[1]


__all__ = ["spare_peer"]

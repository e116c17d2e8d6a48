"""Which peer plans a stale round for this auctioneer (pure).

A background plan (``aio/refresh.py``) takes 0.3-1.6 s of CPU. In the auctioneer's own
planning child it comes out of the auctioneer's quota, which on the emulated cluster is
the busiest of the four (its CPU per request over its share is the request's latency,
within 8%), so the child is held until the daemon idles, and under back-to-back
requests the plan in use grew 9-26% slower than a fresh one by its own bids. A peer the
plan at hand leaves out has CPU to spare: it makes the plan (the fastest such peer).
A peer the plan uses has none: planned there at once, beside the requests, the plans
cost its strips what they cost the auctioneer's (on the emulated cluster the first
distributed requests of a run then measured twice their plan, and the strategy ran
alone), so a plan that uses every peer is planned here, as before.
"""

from __future__ import annotations

from collections.abc import Collection

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan

REFERENCE_FLOPS = 1e9
"""Speeds are compared as the seconds of this many conv FLOPs."""


def spare_peer(
    plan: Plan | None, testbed: Testbed | None, peers: Collection[str], me: str
) -> str | None:
    """The fastest peer among ``peers`` (bidders of the round, not ``me``) that ``plan``
    leaves out: no part in any stage, not its head device. None: no such peer (or no
    plan, or a testbed that does not name the plan's devices)."""
    if plan is None or testbed is None or tuple(testbed.names) != plan.devices:
        return None
    used = {p.device for st in plan.stages for p in st.parts}
    if plan.head_device is not None:
        used.add(plan.head_device)
    idle = [
        (testbed.devices[d].compute.seconds("conv", REFERENCE_FLOPS), name)
        for d, name in enumerate(plan.devices)
        if d not in used and name != me and name in peers
    ]
    return min(idle)[1] if idle else None


__all__ = ["spare_peer"]

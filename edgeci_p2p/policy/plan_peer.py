"""Which peer plans a stale round for this auctioneer (pure).

A background plan (``aio/refresh.py``) takes 0.3-1.6 s of CPU. In the auctioneer's own
planning child it comes out of the auctioneer's quota, which on the emulated cluster is
the busiest of the four (its CPU per request over its share is the request's latency,
within 8%), so the child is held until the daemon idles, and under back-to-back
requests the plan in use grew 9-26% slower than a fresh one by its own bids: the
auctioneer serves every request, so it is never idle.

A peer the plan at hand leaves out has CPU to spare: it makes the plan (the fastest
such peer). Where the plan uses every peer, the fastest other peer the plan uses makes
it all the same, in its own child, held while it serves work: a helper is idle between
its strips of one request and the next, and through every request the auctioneer runs
alone or on others, where the auctioneer never is. Planned there *at once*, beside its
strips, a plan cost that peer's strips what it costs the auctioneer's (on the emulated
cluster the first distributed requests of a run then measured twice their plan, and
the strategy ran alone), hence the hold; such a peer is given longer to answer
(:func:`answer_within`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan

REFERENCE_FLOPS = 1e9
"""Speeds are compared as the seconds of this many conv FLOPs."""


@dataclass(frozen=True)
class PlanningPeer:
    """The peer asked to plan, and whether the plan at hand gives it work."""

    name: str
    in_plan: bool


def spare_peer(
    plan: Plan | None, testbed: Testbed | None, peers: Collection[str], me: str
) -> PlanningPeer | None:
    """The fastest peer among ``peers`` (bidders of the round, not ``me``) that ``plan``
    leaves out (no part in any stage, not its head device); else the fastest of those
    it uses. None: no such peer (or no plan, or a testbed that does not name the plan's
    devices)."""
    if plan is None or testbed is None or tuple(testbed.names) != plan.devices:
        return None
    ranked = sorted(
        (uses(plan, name), testbed.devices[d].compute.seconds("conv", REFERENCE_FLOPS), name)
        for d, name in enumerate(plan.devices)
        if name != me and name in peers
    )
    return PlanningPeer(ranked[0][2], ranked[0][0]) if ranked else None


def uses(plan: Plan | None, name: str) -> bool:
    """Whether ``plan`` gives the peer ``name`` work: a part in a stage, or the head."""
    if plan is None or name not in plan.devices:
        return False
    d = plan.devices.index(name)
    return plan.head_device == d or any(p.device == d for st in plan.stages for p in st.parts)


def answer_within(peer: PlanningPeer, timeout_s: float, patience_s: float) -> float:
    """Seconds the auctioneer waits for ``peer``'s plan before it plans the job itself:
    ``timeout_s`` for a peer the plan leaves out (idle: it starts at once); a peer in
    the plan holds the job while it serves work, up to ``patience_s``, first."""
    return timeout_s + (patience_s if peer.in_plan else 0.0)


__all__ = ["PlanningPeer", "answer_within", "spare_peer", "uses"]

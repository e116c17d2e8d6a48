"""What our planners could reach on one set of bids with each fixed cost taken away (pure).

On the emulated cluster the runtime now runs within 2-12% of its plans, so the best
plan the planner can make on the bids a request ran with is close to a bound on that
request. This module asks what holds that plan back: the same bids planned again
with the links free (infinite bandwidth, no round trip), with no loop pick-up
(``DeviceModel.hop_s``, charged on every halo row and every output sent back), with
no fixed costs (each fit's seconds per call and each device's seconds per piece), and
with none of these, which leaves the compute itself, halo recompute and balance.

Each figure is the faster of a plan made afresh on the reduced costs and the
request's own plan simulated on them: DPFL is optimal in its space but the halo
planner's search is not, and a bound should never read above the costs it removes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from edgeci_p2p.core.cost import ComputeModel, LinearFit, LinkModel, Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners import plan as plan_with

__all__ = ["COSTS", "Bound", "alone_seconds", "bounds", "ideal_speedup", "stage_kinds"]


def free_links(tb: Testbed) -> Testbed:
    """``tb`` with every link of infinite bandwidth and no round trip."""
    return replace(tb, links=tuple(LinkModel(float("inf"), 0.0) for _ in tb.links))


def no_pickup(tb: Testbed) -> Testbed:
    """``tb`` with no device's loop taking any time to pick up rows or hand outputs on."""
    return replace(tb, devices=tuple(replace(d, hop_s=0.0) for d in tb.devices))


def _unfixed(c: ComputeModel) -> ComputeModel:
    fits = {k: LinearFit(f.a, 0.0, f.rel_error) for k, f in c.fits.items()}
    return replace(c, fits=fits, piece_s=0.0)


def no_fixed(tb: Testbed) -> Testbed:
    """``tb`` with no fixed seconds per call (each fit's intercept) or per piece."""
    return replace(tb, devices=tuple(replace(d, compute=_unfixed(d.compute)) for d in tb.devices))


def none_of_these(tb: Testbed) -> Testbed:
    """``tb`` with free links, no pick-up and no fixed costs: the compute alone."""
    return no_fixed(no_pickup(free_links(tb)))


COSTS: Mapping[str, Callable[[Testbed], Testbed]] = {
    "links free": free_links,
    "no loop pick-up": no_pickup,
    "no fixed costs": no_fixed,
    "none of these": none_of_these,
}
"""Each variant of the bids, by the name the reports give it."""


@dataclass(frozen=True)
class Bound:
    """The best plan found on one variant of the bids."""

    name: str
    """``as bid``, or a key of :data:`COSTS`."""
    seconds: float
    """Its predicted latency, the head included."""
    stages: str
    """Its stages, one letter each: ``g`` gathered through the auctioneer, ``h``
    strip-resident (halo rows peer to peer)."""
    fresh: bool
    """Whether a plan made afresh (rather than the request's own plan) gave it."""


def stage_kinds(p: Plan) -> str:
    """``p``'s stages as letters: ``h`` for a strip-resident stage, ``g`` otherwise."""
    return "".join("h" if s.transfer == "halo" else "g" for s in p.stages)


def _pick(name: str, spec: ModelSpec, tb: Testbed, made: Plan, at_hand: list[Plan]) -> Bound:
    """The faster on ``tb`` of ``made`` (planned on it) and the plans ``at_hand``."""
    best = Bound(name, simulate(made, spec, tb).latency, stage_kinds(made), True)
    for p in at_hand:
        t = simulate(p, spec, tb).latency
        if t < best.seconds:
            best = Bound(name, t, stage_kinds(p), False)
    return best


def bounds(
    strategy: str, spec: ModelSpec, testbed: Testbed, own: Plan | None = None
) -> tuple[Bound, ...]:
    """The best plan of ``strategy`` on ``testbed`` (bids as a round priced them), then
    on each variant of :data:`COSTS`. On each variant the plans at hand (``own``, the
    plan a request ran, and the one made on the bids as they are) compete with the
    one made afresh, so no variant reads slower than the bids as they are."""
    at_hand = [own] if own is not None else []
    first = plan_with(strategy, spec, testbed)
    out = [_pick("as bid", spec, testbed, first, at_hand)]
    for name, variant in COSTS.items():
        tb = variant(testbed)
        out.append(_pick(name, spec, tb, plan_with(strategy, spec, tb), [*at_hand, first]))
    return tuple(out)


def alone_seconds(spec: ModelSpec, testbed: Testbed) -> float:
    """The auctioneer alone on the same bids (the ``local`` plan)."""
    return simulate(plan_with("local", spec, testbed), spec, testbed).latency


def ideal_speedup(testbed: Testbed) -> float:
    """The devices' summed convolution speed over the auctioneer's, as bid."""
    speeds = [1.0 / d.compute.seconds("conv", 1e9) for d in testbed.devices]  # a GFLOP
    return sum(speeds) / speeds[testbed.auctioneer]

"""The share of an auctioneer's CPU its own event loop takes while it runs a request (pure).

An auctioneer's loop does real work for every distributed request: it encodes, encrypts
and sends the slabs and strip jobs, decrypts, decodes and stitches what comes back,
relays halo rows, answers bids and keeps the timeline. Where the daemon's threads
share one core or less (a CPU quota), that work comes out of the same CPU as the
auctioneer's own pieces. Measured on the emulated cluster's 0.4-core auctioneer
(VGG-16, ``thread_time`` of the loop across each request): 7-13 ms per request run
alone, 30-36 ms per ``edgeci`` request, 47-51 ms per ``edgeci-halo`` request, that is
15-20% of its quota over the request, and more for the baselines, which move
10-40 MB through it.

The calibration measures the auctioneer's pure speed (``calibration.own_seconds``
leaves that loop work out, because it depends on the strategy, not on the CPU). So
the plan must charge it: :class:`LoopShare` learns, per strategy, the share ``s`` of
the CPU the daemon's other threads (its loop, mostly) took *while the auctioneer's own
pieces computed*, across its distributed requests, and :func:`with_compute_factor`
prices the auctioneer's own bid in that strategy's rounds at ``1 / (1 - s)`` times its
compute: a piece of ``w`` seconds during which the others ran ``c`` CPU seconds on a
quota of ``q`` cores computed for ``w - c/q`` of them. The planner then gives the
auctioneer less of the map, and predicts the time its pieces really take. (The same
function prices any bid at its ``strip_factor`` in a strip-resident round.)

At first the share was the loop's CPU over the whole of the maps' time. But much of
that work (encoding the strip jobs, decoding and stitching what comes back) runs while
the auctioneer computes nothing, and is on the request's path anyway; charged to its
pieces it made them too slow: on the emulated cluster ``edgeci-halo`` learnt 18%
(1.22x), and the auctioneer then ran its strips in 0.78-0.88 of the plan's time and
waited 29-101 ms per request for its neighbours' rows.

Like the speed, the share moves the bid only past a band and onto a grid: each change
is a new plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgeci_p2p.auction.messages import Bid

__all__ = ["LoopShare", "with_compute_factor"]


@dataclass
class LoopShare:
    """Per strategy: the share of this node's CPU its event loop takes while it runs
    one of its own distributed requests (``in_force``, what its bids use)."""

    weight: float = 0.3
    """Weight of each request in the running mean of the share."""
    skip: int = 2
    """Requests of a strategy left out at first (cold: first-time allocations and
    connections)."""
    band: float = 0.05
    """The share in force changes when the running mean differs from it by more."""
    grid: float = 0.025
    """The share in force is a multiple of this."""
    highest: float = 0.5
    """The most it is taken to be: beyond it the loop is not what slows the node."""
    mean: dict[str, float] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    in_force: dict[str, float] = field(default_factory=dict)

    def observe(
        self, strategy: str, loop_cpu_s: float, wall_s: float, cores: float | None
    ) -> float | None:
        """One request of ``strategy`` run here: its own pieces computed in ``wall_s``
        seconds while the other threads ran ``loop_cpu_s`` CPU seconds, on ``cores`` of
        CPU (the quota; None: more than one core, where the loop runs beside the work
        and costs it nothing).
        Returns the new share in force when it changes, else None."""
        if cores is None or cores > 1.0 or wall_s <= 0.0 or loop_cpu_s < 0.0:
            return None
        n = self.seen.get(strategy, 0) + 1
        self.seen[strategy] = n
        if n <= self.skip:
            return None
        share = min(loop_cpu_s / (wall_s * cores), self.highest)
        old = self.mean.get(strategy)
        mean = share if old is None else (1.0 - self.weight) * old + self.weight * share
        self.mean[strategy] = mean
        now = self.in_force.get(strategy, 0.0)
        if abs(mean - now) <= self.band:
            return None
        self.in_force[strategy] = round(mean / self.grid) * self.grid
        return self.in_force[strategy]

    def factor(self, strategy: str) -> float:
        """How many times its compute alone the auctioneer's pieces take in ``strategy``."""
        return 1.0 / (1.0 - self.in_force.get(strategy, 0.0))


def with_compute_factor(bid: Bid, factor: float) -> Bid:
    """``bid`` with its compute priced ``factor`` times: every probe item but the
    head's (the head runs after the last map is in, when the loop is quiet and no strip
    is computed; its fit is memory-bound and calibrated apart)."""
    if factor == 1.0:
        return bid
    return replace(
        bid,
        duration={
            item: seconds if item.startswith("probe:head:") else seconds * factor
            for item, seconds in bid.duration.items()
        },
    )

"""The link figures an auctioneer plans with: what it measured, with hysteresis.

A bid carries the bidder's own idea of its link; the auctioneer replaces it with
what it measured of that peer (link probes, else a fit over the tiles it served),
and changes the figures it plans with only when a new estimate is more than 2x
off, so that measurement noise (ping RTTs flip between 2 and 4 ms under load) does
not make every request miss the decision cache.
"""

from __future__ import annotations

from dataclasses import replace

from edgeci_p2p.auction.messages import Bid
from edgeci_p2p.core.membership import Member

DEFAULT_BANDWIDTH = 2e8
"""Bytes/s a link is planned with until tiles have measured it (loopback measures
120-500 MB/s effective here, serialisation and hand-offs included)."""
DEFAULT_TILE_OVERHEAD = 0.005
"""Seconds per tile round trip beyond bytes/bandwidth until measured (encoding,
socket, worker hand-off on both ends); a prior, replaced by the fitted value."""
HYSTERESIS = 2.0
"""Planned figures change only when a new estimate is off by more than this factor."""


def measured_link(
    member: Member, bid_rtt: float, fixed_bandwidth: float | None
) -> tuple[float, float]:
    """(bytes/s, rtt) of ``member``'s link as this node measured it.

    The rate is the link's own from probes (queueing at this node's NIC, which served
    tiles fold into their fit, is the simulator's to model), else that fit, else
    :data:`DEFAULT_BANDWIDTH`; ``fixed_bandwidth`` (links known in advance) wins over
    all. The link model charges rtt/2 per transfer and a tile makes two (slab out,
    strip back): the fitted per-tile overhead is the round trip it costs. Without
    it, ResNet-34's many small stages planned 30% too fast and ran distributed,
    slower than on one peer.
    """
    rtt = member.rtt if member.rtt is not None else bid_rtt
    if fixed_bandwidth is not None:
        return fixed_bandwidth, rtt
    bw = member.probed_bandwidth or member.bandwidth or DEFAULT_BANDWIDTH
    overhead = member.overhead if member.overhead is not None else DEFAULT_TILE_OVERHEAD
    return bw, max(rtt, overhead)


def close_enough(new: tuple[float, float], old: tuple[float, float]) -> bool:
    """Whether ``new`` (bytes/s, rtt) is within :data:`HYSTERESIS` of ``old``."""
    lo, hi = 1.0 / HYSTERESIS, HYSTERESIS
    return lo <= new[0] / old[0] <= hi and lo <= (new[1] + 1e-3) / (old[1] + 1e-3) <= hi


class PlannedLinks:
    """The link figures this auctioneer plans each peer's bids with."""

    def __init__(self, fixed_bandwidth: float | None = None) -> None:
        self.fixed_bandwidth = fixed_bandwidth
        self._planned: dict[str, tuple[float, float]] = {}

    def adjust(self, bid: Bid, member: Member | None) -> Bid:
        """``bid`` with its link figures replaced by what was measured of its bidder
        (``member``; None: not a member yet, the bid is kept as it is)."""
        if member is None:
            return bid
        new = measured_link(member, bid.rtt, self.fixed_bandwidth)
        old = self._planned.get(bid.bidder)
        if old is None or not close_enough(new, old):
            old = self._planned[bid.bidder] = new
        return replace(bid, bandwidth=old[0], rtt=old[1])

"""Peers that share a machine share its cores: plan them as one pool of CPU (pure).

A bid says how fast its peer computes when it has its cores to itself. Several
peers on one machine (a demo, a test, two peers on one board, an emulated cluster)
do not: while a plan keeps them all busy they split the machine's cores. Each bid
carries its machine's id, the cores its tile work can use and the machine's
cores; the auctioneer slows every co-located peer's bid so that together they
use no more cores than the machine has. On its own machine it first keeps its own
cores and :data:`LOOP_RESERVE` more for its event loop (framing, encoding,
stitching for every tile it hands out, and the OS): a peer that could only run on
cores the auctioneer needs is declined rather than planned as a free device.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from edgeci_p2p.auction.messages import Bid

LOOP_RESERVE = 1.0
"""Cores the auctioneer keeps on its own machine beyond its tile threads."""
MIN_SHARE = 0.1
"""A co-located peer left less than this share of the cores it asks for is declined:
its tiles would cost more in hand-offs than they compute."""


def pool_colocated(bids: Sequence[Bid], auctioneer: str, own_host: Bid | None = None) -> list[Bid]:
    """``bids`` with each machine's cores shared among the peers on it: durations of
    co-located peers stretched by ``wanted / available`` cores (items are priced by
    compute, so a peer at half its cores takes twice as long), or the bid declined
    when too little is left. Bids without a machine id are left as they are.

    ``own_host`` carries the auctioneer's machine (``host``, ``cpus``, ``host_cpus``)
    for a round its own bid missed (it can come after the window closes on a loaded
    machine): the peers sharing its cores are pooled all the same."""
    own = next((b for b in bids if b.bidder == auctioneer), own_host)
    groups: dict[str, list[Bid]] = defaultdict(list)
    for b in bids:
        if b.host and not b.declined and b.bidder != auctioneer:
            groups[b.host].append(b)
    changed: dict[str, Bid] = {}
    for host, peers in groups.items():
        mine = own is not None and own.host == host
        cores = max([b.host_cpus for b in peers] + ([own.host_cpus] if own and mine else []))
        available = cores
        if own is not None and mine:
            # At least a core of its own: a peer's cpus are its measured share, and on
            # a machine loaded by other work three one-thread peers on two cores each
            # measured ~0.4, which left "room" for the other two: the demo's cluster
            # then ran 3-4x slower than its entry peer alone.
            available -= max(own.cpus, 1.0) + LOOP_RESERVE
        wanted = sum(b.cpus for b in peers)
        if wanted <= 0 or wanted <= available + 1e-9:
            continue
        share = max(0.0, available) / wanted
        for b in peers:
            if share < MIN_SHARE:
                why = (
                    f"shares machine {host[:8]} ({cores:g} cores) with "
                    f"{'the auctioneer and ' if mine else ''}"
                    f"{len(peers) - 1} other peer(s): no cores left for it"
                )
                changed[b.bidder] = replace(b, duration={}, declined=why)
            else:
                stretched = {k: v / share for k, v in b.duration.items()}
                changed[b.bidder] = replace(b, duration=stretched)
    return [changed.get(b.bidder, b) for b in bids]

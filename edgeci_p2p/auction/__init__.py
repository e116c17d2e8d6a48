"""AWAS, the auction-based workload assignment (pure; time is passed in as ``now``).

* :mod:`.messages`: calls for bids, bids, awards, replies, releases (plain-dict forms).
* :mod:`.bidder`: how a peer prices work and keeps its promises (leased reservations).
* :mod:`.round`: the auctioneer's side of one auction, a state machine with timers.
* :mod:`.winner`: reverse auction + local search, Bertsekas' epsilon-auction.
* :mod:`.awas`: AWAS + DPFL (bids -> device models -> plans -> placed strips).

The shared-cluster simulation behind ``bench sim --scenario dynamic-load`` that runs
AWAS per request is a scenario, :mod:`edgeci_p2p.scenarios.dynamic_load`.
"""

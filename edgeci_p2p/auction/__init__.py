"""AWAS, the auction-based workload assignment (pure; time is passed in as ``now``).

* :mod:`.messages`: calls for bids, bids, awards, replies, releases (plain-dict forms).
* :mod:`.bidder`: how a peer prices work and keeps its promises (leased reservations).
* :mod:`.round`: the auctioneer's side of one auction, a state machine with timers.
* :mod:`.winner`: reverse auction + local search, Bertsekas' epsilon-auction.
* :mod:`.awas`: AWAS + DPFL (bids -> device models -> plans -> placed strips).
* :mod:`.dynamic_load`: the shared-cluster simulation behind ``bench sim --scenario dynamic-load``.
"""

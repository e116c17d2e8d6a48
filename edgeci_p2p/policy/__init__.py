"""Pure policy of the asyncio shell (no torch, asyncio, sockets or zeroconf; time is ``now``).

The shell in :mod:`edgeci_p2p.aio` waits; the choices it makes while waiting live here,
each testable without a daemon:

* :mod:`.tile_ids`: the one scheme for tile ids on the wire (gather tiles and their
  attempts, strip jobs, the head).
* :mod:`.deadlines`: how long a tile, strip job or head job may take, and when a
  straggler is hedged.
* :mod:`.fallbacks`: where a lost tile goes next.
* :mod:`.links`: the link figures an auctioneer plans with (measured, with hysteresis).
* :mod:`.forwarding`: which peer a busy entry peer passes a request on to.
* :mod:`.strip_jobs`: a halo segment of a plan as one strip job per peer.
* :mod:`.recent`: bounded memories that forget their oldest entries first.
* :mod:`.calibration`: a peer's speed and fixed cost per piece, learnt from its work.
* :mod:`.loop_share`: the CPU an auctioneer's own event loop takes in its requests,
  charged to its own bid.
* :mod:`.outcomes`: running alone or distributing, judged by what each measured here
  against its plan.
"""

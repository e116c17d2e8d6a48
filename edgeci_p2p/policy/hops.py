"""``hop_s``: how long this peer's event loop takes, while its worker computes, to pick
up what is handed to it (:attr:`edgeci_p2p.core.cost.DeviceModel.hop_s`).

A halo row move waits for the sender's loop to take the rows back from its worker
and for the receiver's loop to read them before the piece that reads them is queued.
On a peer capped at a fraction of a core, the loop shares the quota with the
convolutions, and each such pick-up waits for the quota: on the emulated cluster halo
rows arrived 12-15 ms (median) after their sender finished computing them, where the
link model charged under a millisecond beyond the bytes. Planned that way, VGG-16's halo
plans had 7-10 stages; with 10 ms more per round trip the same bids gave 5-6 stage
plans, which ran faster in alternated runs (docs/cluster-benchmark.md, thirty-first
session).

A peer's tile or head result waits for the same pick-up before it goes back to the
auctioneer, and neither the link fit nor the compute fit sees that wait (gathered tiles
came back 5-14 ms later than planned): the figure is charged there too.

Each strip piece, tile and head tells how long the loop took to have it back once the
worker was done with it; ``observe`` keeps the median of the recent ones, and moves the figure the
bids carry only past a band, onto a grid (a new figure is a new plan everywhere).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class LoopHops:
    """The median of this peer's recent pick-up delays, as its bids carry it."""

    keep: int = 64
    """Recent delays the median is over (a few requests' pieces)."""
    min_samples: int = 16
    band_s: float = 0.001
    band: float = 0.3
    """The figure changes when the median differs from it by more than the larger of
    ``band_s`` and ``band`` times it."""
    grid_s: float = 0.0005
    """The figure in force is a multiple of this."""
    highest: float = 0.05
    """The most it is taken to be (a delay past this is a stall, not a hop)."""

    hop_s: float = 0.0
    """The figure in force."""
    samples: list[float] = field(default_factory=list)

    def observe(self, delays: list[float]) -> float | None:
        """Add pick-up delays (seconds); returns the new figure when it moved, else None."""
        self.samples.extend(min(max(d, 0.0), self.highest) for d in delays)
        del self.samples[: -self.keep]
        if len(self.samples) < self.min_samples:
            return None
        got = statistics.median(self.samples)
        if abs(got - self.hop_s) <= max(self.band_s, self.band * self.hop_s):
            return None
        self.hop_s = round(round(got / self.grid_s) * self.grid_s, 6)
        return self.hop_s

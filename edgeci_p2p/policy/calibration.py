"""A peer's speed, calibrated online from the work it serves.

A peer bids with its profile: a few seconds of convolutions timed at start, scaled by
the CPU quota it reads. What it really does under load drifts from that: a CFS quota
shared with its own event loop, caches refilled after every throttled period, other
work on the board. The auctioneer plans with the bids, so a peer that computes 1.4x
slower than it bids becomes everyone's straggler, and every prediction made with its
bid is short by as much.

So each peer compares the time every piece of work it computes took with what its
profile predicted for it, and bids with its profile scaled by the smoothed ratio. The
ratio moves the bids only when it leaves a band around the one in force: a new bid
means a new plan, and planning costs more than a few percent of error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SpeedCalibration"]


@dataclass
class SpeedCalibration:
    """``slowdown``: measured / profiled time of this peer's work, as its bids use it.

    ``observe(predicted_s, measured_s)`` takes one piece of work (a tile, a strip
    piece, a head) and returns the new slowdown when the bids must change, else None.
    Pieces predicted shorter than ``min_predicted_s`` are skipped: their time is mostly
    the clock and the dispatch, which the profile's fixed cost already stands for.
    """

    weight: float = 0.2
    """Weight of each observation in the running mean of log(measured / predicted)."""
    min_samples: int = 5
    """Observations before the first change: one slow piece is not a slow peer."""
    band: float = 0.15
    """The bids change when the running ratio differs from the one in force by more."""
    min_predicted_s: float = 0.002
    lowest: float = 0.5
    highest: float = 4.0
    """Bounds on the slowdown: beyond them something other than speed is wrong (a
    stalled machine, a bad profile) and the estimate should not chase it."""

    samples: int = 0
    mean_log: float = 0.0
    slowdown: float = 1.0
    """The factor in force: bids use the profile's times multiplied by it."""

    def __post_init__(self) -> None:
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"calibration weight {self.weight} is not in (0, 1]")
        if not 0.0 < self.lowest <= 1.0 <= self.highest:
            raise ValueError(f"calibration bounds [{self.lowest}, {self.highest}] exclude 1")

    @property
    def estimate(self) -> float:
        """The running ratio (not necessarily in force yet)."""
        return math.exp(self.mean_log)

    def observe(self, predicted_s: float, measured_s: float) -> float | None:
        if predicted_s < self.min_predicted_s or measured_s <= 0.0:
            return None
        ratio = min(self.highest, max(self.lowest, measured_s / predicted_s))
        # The first observations are averaged plainly, then exponentially: an early
        # outlier must not weigh a fifth of the estimate for ever after.
        self.samples += 1
        w = max(self.weight, 1.0 / self.samples)
        self.mean_log += w * (math.log(ratio) - self.mean_log)
        if self.samples < self.min_samples:
            return None
        est = self.estimate
        if abs(math.log(est / self.slowdown)) <= math.log1p(self.band):
            return None
        self.slowdown = est
        return est

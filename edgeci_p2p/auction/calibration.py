"""A peer's bids follow the work it really does (pure).

A peer's compute model is profiled once, at start, in a few seconds of short
runs. What it then does can differ: a CPU quota lets short runs burst and
throttles long ones (cgroup CFS periods), co-tenants come and go, and the
auctioneer spends part of its CPU coordinating the request it computes for. Bids
that keep pricing from the start-up profile make every plan lean the same wrong
way, request after request.

:class:`Calibration` keeps the measured over predicted compute seconds of the
work the peer ran (tiles, strip pieces, heads) over a window, and gives the
factor by which the peer's model is slowed. The factor moves in whole steps and
only when the window has moved more than a step from it, so that bids (and the
auctioneer's cached plans, keyed by bids) stay the same while the peer behaves
the same.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from edgeci_p2p.core.cost import ComputeModel, LinearFit


@dataclass
class Calibration:
    """Measured / predicted compute seconds of recent work, as a step factor."""

    window: int = 24
    """Observations kept (the latest)."""
    step: float = 0.05
    """The factor is a power of ``1 + step``; it moves when the window is further than
    one step from it."""
    lo: float = 0.5
    hi: float = 2.0
    """The factor stays within ``[lo, hi]``: the profile is not thrown away."""
    min_observations: int = 4
    min_predicted: float = 0.002
    """Work predicted shorter than this is not observed (timer and call noise)."""
    factor: float = 1.0
    """Seconds measured per second predicted: 1.2 = this peer is 20% slower than its model."""
    _seen: deque[tuple[float, float]] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.lo <= 1 <= self.hi or self.step <= 0 or self.window < 1:
            raise ValueError(
                f"calibration: bounds [{self.lo}, {self.hi}] must hold 1, step {self.step} "
                f"must be positive and window {self.window} at least 1"
            )

    def observe(self, predicted: float, measured: float) -> bool:
        """One piece of work: its predicted and measured seconds. True when the factor moved."""
        if predicted < self.min_predicted or not measured > 0 or not math.isfinite(measured):
            return False
        self._seen.append((predicted, measured))
        while len(self._seen) > self.window:
            self._seen.popleft()
        if len(self._seen) < self.min_observations:
            return False
        raw = sum(m for _, m in self._seen) / sum(p for p, _ in self._seen)
        raw = min(self.hi, max(self.lo, raw))
        one = math.log1p(self.step)
        if abs(math.log(raw / self.factor)) <= one:
            return False
        moved = (1 + self.step) ** round(math.log(raw) / one)
        moved = min(self.hi, max(self.lo, moved))
        if moved == self.factor:
            return False
        self.factor = moved
        return True

    @property
    def observations(self) -> int:
        return len(self._seen)


def calibrated(base: ComputeModel, units: float, head: float) -> ComputeModel:
    """``base`` slowed by ``units`` for the units' kinds and by ``head`` for the head."""
    return ComputeModel(
        {
            k: LinearFit(
                f.a * (head if k == "head" else units),
                f.b * (head if k == "head" else units),
                f.rel_error,
            )
            for k, f in base.fits.items()
        }
    )

"""How many of a map's bytes travel: zero suppression, measured on the maps a node sees.

Maps after a ReLU travel zero-suppressed (docs/protocol.md 5.4): a bit per value
plus the non-zero values. How many are zero depends on the weights and the
inputs (about half with seeded weights, most with trained ones), so the planners
cannot know it from the model; the auctioneer counts the zeros of every map it
assembles and plans with what it saw (``ModelSpec.wire_fraction``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from edgeci_p2p.core.units import ModelSpec

SUPPRESSED_MAX_FRACTION = 0.9
"""A sender zero-suppresses a map only when that takes at most this share of its
bytes (``wire.tensors.ZERO_BITMASK_MAX_FRACTION``); above it the map goes whole."""
SMOOTHING = 0.3
"""Weight of the newest map in a boundary's running estimate."""
REPLAN_STEP = 0.1
"""The fractions planned with change only when one moves by more than this, so that
input-to-input wobble does not miss the plan cache on every request."""


def wire_fraction(values: int, nonzero: int, itemsize: int = 4) -> float:
    """The share of ``values * itemsize`` bytes a map with ``nonzero`` non-zero values
    sends: mask plus values, or everything when suppression would not pay."""
    if values <= 0:
        return 1.0
    if not 0 <= nonzero <= values:
        raise ValueError(f"{nonzero} non-zero values in a map of {values}")
    frac = (math.ceil(values / 8) + nonzero * itemsize) / (values * itemsize)
    return frac if frac <= SUPPRESSED_MAX_FRACTION else 1.0


@dataclass
class WireFractions:
    """Running per-boundary wire fractions of one model at one input size."""

    boundaries: int
    """Cut points 0..n: ``n_units + 1``."""
    seen: dict[int, float] = field(default_factory=dict)
    planned: tuple[float, ...] = ()

    def observe(self, boundary: int, values: int, nonzero: int) -> None:
        """The map at ``boundary`` had ``nonzero`` of ``values`` values non-zero."""
        if not 0 < boundary < self.boundaries:
            raise ValueError(f"boundary {boundary} outside 1..{self.boundaries - 1}")
        f = wire_fraction(values, nonzero)
        old = self.seen.get(boundary)
        self.seen[boundary] = f if old is None else old + SMOOTHING * (f - old)

    def estimate(self) -> tuple[float, ...]:
        """Per boundary: what was seen there, else the mean of what was seen anywhere
        (maps after ReLUs of one network are alike); the input always travels whole
        (pixels, or a dense tensor). Empty until something was seen."""
        if not self.seen:
            return ()
        fill = sum(self.seen.values()) / len(self.seen)
        return (1.0, *(self.seen.get(b, fill) for b in range(1, self.boundaries)))

    def for_planning(self) -> tuple[float, ...]:
        """The estimate, kept unchanged until some boundary moves by more than
        :data:`REPLAN_STEP` (rounded to hundredths, so equal plans share a cache key)."""
        now = tuple(round(f, 2) for f in self.estimate())
        if len(now) != len(self.planned) or any(
            abs(a - b) > REPLAN_STEP for a, b in zip(now, self.planned, strict=True)
        ):
            self.planned = now
        return self.planned


def uniform_fractions(n_units: int, zeros: float) -> tuple[float, ...]:
    """Wire fractions for a network whose every map after the input has this share of
    zeros (``edgeci plan --zeros``): the input travels whole."""
    if not 0.0 <= zeros <= 1.0:
        raise ValueError(f"a share of zeros is in 0..1, not {zeros}")
    if zeros == 0.0:
        return ()
    f = wire_fraction(10**6, round((1 - zeros) * 10**6))
    return (1.0, *([f] * n_units))


def with_zeros(spec: ModelSpec, zeros: float) -> ModelSpec:
    """``spec`` planned as if every map after the input had this share of zeros."""
    if not zeros:
        return spec
    return dataclasses.replace(spec, wire_fraction=uniform_fractions(spec.n_units, zeros))

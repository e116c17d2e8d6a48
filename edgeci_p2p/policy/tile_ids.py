"""Tile ids: the one place that knows how a request's tiles are numbered on the wire.

A ``tile_request``/``strip_job``/``head_job`` and the ``tile_result`` (or ``cancel``)
that answers it are matched by ``(request_id, tile_id)``. The numbers are part of the
protocol between peers of different versions, so they never change:

* a gather tile is part ``p`` of stage ``s``: base ``s * 1000 + p``; each attempt at
  it has its own id ``base * 8 + attempt`` (so a late answer from a failed peer is
  ignored), and the hedged copy of attempt ``a`` is attempt ``a + 4``;
* a strip job of the halo segment starting at stage ``s``, for device ``d``:
  ``2**24 + s * 64 + d`` (far above any gather tile);
* a request's head job: ``2**24 - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

STRIP_TILE_BASE = 1 << 24
"""Strip jobs' tile ids start here (gather tiles' ids stay far below)."""
HEAD_TILE_ID = STRIP_TILE_BASE - 1
"""The tile id of a request's head job (``Plan.head_device``)."""
ATTEMPTS_PER_TILE = 8
"""Ids reserved per gather tile: first tries 0-3, their hedged copies 4-7."""
HEDGE_OFFSET = 4
"""A hedged copy of attempt ``a`` runs as attempt ``a + HEDGE_OFFSET``."""
PARTS_PER_STAGE = 1000
DEVICES_PER_SEGMENT = 64


@dataclass(frozen=True)
class GatherTile:
    """Part ``part`` of stage ``stage`` of a gather stage."""

    stage: int
    part: int

    def __post_init__(self) -> None:
        if not 0 <= self.part < PARTS_PER_STAGE:
            raise ValueError(f"a stage has at most {PARTS_PER_STAGE} parts, not part {self.part}")

    @property
    def base(self) -> int:
        """The tile's number in logs and in the auctioneer's bookkeeping."""
        return self.stage * PARTS_PER_STAGE + self.part

    def attempt(self, attempt: int) -> int:
        """The wire id of one attempt at this tile (first tries are 0-3 as long as
        ``PeerConfig.tile_retries`` stays below 4; their hedged copies 4-7)."""
        return self.base * ATTEMPTS_PER_TILE + attempt


def hedged(attempt: int) -> int:
    """The attempt number of the hedged copy of ``attempt``."""
    return attempt + HEDGE_OFFSET


def strip_job_id(first_stage: int, device: int) -> int:
    """The wire id of the strip job of ``device`` in the segment starting at ``first_stage``."""
    if not 0 <= device < DEVICES_PER_SEGMENT:
        raise ValueError(f"a segment has at most {DEVICES_PER_SEGMENT} devices, not {device}")
    return STRIP_TILE_BASE + first_stage * DEVICES_PER_SEGMENT + device

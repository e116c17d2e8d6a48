"""The halo mailbox of strip-resident execution (``edgeci-halo``): halo rows a
neighbour sent, by (request, job), until the stage that reads them runs; and the
errors a strip job fails with. Every peer has one (:mod:`edgeci_p2p.aio.strips` runs
the jobs that read it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import HaloRows

Array = npt.NDArray[np.float32]

ORPHAN_TTL = 30.0
"""Seconds halo rows for a job that has not (yet) arrived here are kept."""
MAX_ORPHAN_BYTES = 256 << 20
"""Bytes of such rows kept at most; the oldest go first."""


class StripJobError(Exception):
    """A strip job cannot go on here (bad job, missing neighbour)."""

    code = ErrorCode.REQUEST_FAILED
    """The wire code of the error reply to the auctioneer."""


class RowsNeverArrived(StripJobError):
    """A neighbour's halo rows did not arrive before the job's deadline."""

    code = ErrorCode.DEADLINE_EXCEEDED


@dataclass
class _Box:
    created: float
    rows: dict[tuple[int, int, int], Array] = field(default_factory=dict)
    """(boundary, first row, stop row) -> data."""
    claimed: bool = False
    """A job here reads this box (unclaimed boxes are orphans, kept for a while)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.rows.values())


class Mailbox:
    """Halo rows by (request, job) until the stage that reads them runs.

    Rows can arrive before their job (a fast neighbour, a slow job transfer):
    they wait in an unclaimed box for at most ``ttl`` seconds and within
    ``max_orphan_bytes``. Rows for a job that has already ended are dropped.
    """

    def __init__(
        self,
        ttl: float = ORPHAN_TTL,
        max_orphan_bytes: int = MAX_ORPHAN_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.max_orphan_bytes, self.clock = ttl, max_orphan_bytes, clock
        self._boxes: dict[tuple[str, int], _Box] = {}
        self._ended: dict[tuple[str, int], None] = {}

    def __len__(self) -> int:
        return len(self._boxes)

    def put(self, msg: HaloRows) -> bool:
        """File ``msg``; False when it was dropped (its job ended here, or no room)."""
        key = (msg.request_id, msg.job_id)
        if key in self._ended:
            return False
        box = self._boxes.get(key)
        if box is None:
            self._sweep()
            box = self._boxes[key] = _Box(self.clock())
        box.rows[(msg.boundary, *msg.rows)] = np.asarray(msg.data, dtype=np.float32)
        box.changed.set()
        if not box.claimed and self._orphan_bytes() > self.max_orphan_bytes:
            del self._boxes[key]
            return False
        return True

    def claim(self, request_id: str, job_id: int) -> None:
        self._ended.pop((request_id, job_id), None)
        box = self._boxes.setdefault((request_id, job_id), _Box(self.clock()))
        box.claimed = True

    def poll(
        self, request_id: str, job_id: int, boundary: int, rows: tuple[int, int]
    ) -> Array | None:
        """Rows ``rows`` at ``boundary`` of a claimed job if they are here (taken), else None."""
        return self._boxes[(request_id, job_id)].rows.pop((boundary, *rows), None)

    async def wait(self, request_id: str, job_id: int, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until rows arrive for a claimed job; call
        :meth:`poll` first, as rows that are already here do not wake this."""
        box = self._boxes[(request_id, job_id)]
        box.changed.clear()
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(box.changed.wait(), timeout)

    def nudge(self, request_id: str, job_id: int) -> None:
        """Wake a stage of the job waiting in :meth:`wait` without rows (something else
        it waits on changed: one of its own sends failed)."""
        box = self._boxes.get((request_id, job_id))
        if box is not None:
            box.changed.set()

    async def take(
        self, request_id: str, job_id: int, boundary: int, rows: tuple[int, int], timeout: float
    ) -> Array:
        """Wait (at most ``timeout`` s) for rows ``rows`` at ``boundary`` of a claimed job."""
        # Real time here: ``clock`` only ages orphans (tests move it by hand).
        deadline = time.monotonic() + timeout
        while (got := self.poll(request_id, job_id, boundary, rows)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RowsNeverArrived(f"rows {list(rows)} at boundary {boundary} never arrived")
            await self.wait(request_id, job_id, left)
        return got

    def end(self, request_id: str, job_id: int) -> None:
        """The job is over here: free its rows and drop any that still come."""
        self._boxes.pop((request_id, job_id), None)
        self._ended[(request_id, job_id)] = None
        while len(self._ended) > 4096:
            self._ended.pop(next(iter(self._ended)))

    def _orphan_bytes(self) -> int:
        return sum(b.nbytes for b in self._boxes.values() if not b.claimed)

    def _sweep(self) -> None:
        now = self.clock()
        for key, box in list(self._boxes.items()):
            if not box.claimed and now - box.created > self.ttl:
                del self._boxes[key]

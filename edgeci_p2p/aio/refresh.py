"""Planning anew, off the requests' path, the rounds that a stale decision answered.

When only the bids' speed or link figures moved, ``CachedDecider`` answers with the
plan at hand and keeps the round as pending; :class:`Refresher` has it planned in the
planning child (:mod:`.aside`), or in a thread if there is none, and gives the
decision back to the decider for the rounds after.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgeci_p2p.aio.aside import AsideError, PlanningAside
from edgeci_p2p.auction.aside import job as aside_job
from edgeci_p2p.auction.decider import CachedDecider, Entry, Pending

log = logging.getLogger("edgeci.auction")


class Refresher:
    """This auctioneer's background plans: one queued task per decider at a time."""

    def __init__(self, aside: PlanningAside | None, record: Callable[[float, bool], None]) -> None:
        self.aside = aside
        """Where stale decisions are planned anew (a child process of the lowest CPU
        priority, ``auction/aside.py``); None: in a thread of this process."""
        self.record = record
        """Counts a plan made here (seconds, cache hit) into the planning metrics."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.untaken: set[int] = set()
        """Deciders whose task has not yet taken its round to plan."""

    def later(self, decider: CachedDecider, lock: threading.Lock) -> None:
        """Plan the round a stale decision stood in for, off the request's path (in the
        planning child, else in a thread); a later round finds it."""

        if id(decider) in self.untaken:
            return  # a task for this decider is yet to take its round: it takes this one
        self.untaken.add(id(decider))
        # The aside's patience runs from the stale answer, not from the child's turn.
        since = self.aside.clock() if self.aside is not None else 0.0

        def take() -> Pending | None:
            with lock:
                self.untaken.discard(id(decider))
                return decider.take_pending()

        def plan_here(pending: Pending) -> None:
            with lock:
                t0 = time.perf_counter()
                decider.decide_pending(pending)
                self.record(time.perf_counter() - t0, False)

        def keep(k: tuple[Any, ...], hit: Entry) -> None:
            with lock:
                decider.remember(k, hit)

        async def run() -> None:
            try:
                pending = await asyncio.to_thread(take)
                if pending is None:
                    return
                if self.aside is not None and self.aside.broken is None:
                    call, bids, k = pending
                    try:
                        job = aside_job(decider.inner, call, bids)
                        hit = await self.aside.decide(job, since)
                    except AsideError as e:
                        log.warning("planning aside failed (%s): planning in a thread", e)
                    else:
                        await asyncio.to_thread(keep, k, hit)
                        return
                await asyncio.to_thread(plan_here, pending)
            except Exception:  # a failed refresh leaves the stale plan in use
                log.exception("planning the new bids in the background failed")

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        """Stop planning in the background (the daemon is stopping)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5.0)
        if self.aside is not None:
            await self.aside.close()


__all__ = ["Refresher"]

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edgeci_p2p.aio.aside import AsideError, PlanningAside
from edgeci_p2p.auction.aside import job as aside_job
from edgeci_p2p.auction.decider import CachedDecider, Entry, Pending

log = logging.getLogger("edgeci.auction")


@dataclass(frozen=True)
class Remote:
    """Where a decider's jobs can be planned on another peer (``aio/plan_peers.py``)."""

    pick: Callable[[CachedDecider], str | None]
    """The peer to ask for this decider's next job; None: none should (plan here)."""
    decide: Callable[[str, CachedDecider, dict[str, Any]], Awaitable[Entry]]
    """The decision that peer makes of the job (raises :class:`AsideError`)."""


class Refresher:
    """This auctioneer's background plans: one task per decider at a time, which plans
    the newest round the decider's stale answers stood in for."""

    def __init__(self, aside: PlanningAside | None, record: Callable[[float, bool], None]) -> None:
        self.aside = aside
        """Where stale decisions are planned anew (a child process of the lowest CPU
        priority, ``auction/aside.py``); None: in a thread of this process."""
        self.record = record
        """Counts a plan made here (seconds, cache hit) into the planning metrics."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.wanted: dict[int, float] = {}
        """Per decider with a round to plan: when (on the aside's clock) the first stale
        answer not yet planned for was given; the patience counts from it."""
        self._running: set[int] = set()
        """Deciders whose task is running (it plans every round wanted meanwhile)."""
        self.planned = 0
        """Decisions made in the background (for tests and the logs)."""
        self.remote: Remote | None = None
        """Where a job goes first, when set: a peer with spare CPU plans it; the child
        here plans what it cannot."""
        self.planned_on_peers = 0
        """Of :attr:`planned`, the decisions a peer made."""

    def later(self, decider: CachedDecider, lock: threading.Lock) -> None:
        """Plan the round a stale decision stood in for, off the request's path (in the
        planning child, else in a thread); a later round finds it.

        Rounds wanted while the decider's task waits for the child are not queued as
        jobs of their own: the task takes the decider's newest pending round when the
        child can start on it (:meth:`PlanningAside.decide_when_free`), so the child
        never plans figures the bids have already moved on from."""
        key = id(decider)
        self.wanted.setdefault(key, self.aside.clock() if self.aside is not None else 0.0)
        if key in self._running:
            return  # its task takes this round (the newest) when the child is free
        self._running.add(key)
        name = getattr(decider.inner, "strategy", "?")

        def take() -> Pending | None:
            with lock:
                return decider.take_pending()

        def plan_here(pending: Pending) -> None:
            with lock:
                t0 = time.perf_counter()
                decider.decide_pending(pending)
                self.record(time.perf_counter() - t0, False)

        def keep(k: tuple[Any, ...], hit: Entry) -> None:
            with lock:
                decider.remember(k, hit)

        async def one(since: float) -> None:
            taken: list[Pending] = []

            async def make() -> dict[str, Any] | None:
                if taken:  # a peer could not plan it: the same job here
                    return aside_job(decider.inner, taken[0][0], taken[0][1])
                self.wanted.pop(key, None)  # rounds wanted from now on: the next job
                pending = await asyncio.to_thread(take)
                if pending is None:
                    return None
                taken.append(pending)
                return aside_job(decider.inner, pending[0], pending[1])

            peer = self.remote.pick(decider) if self.remote is not None else None
            if self.remote is not None and peer is not None:
                # That peer's child can start on it now: the job is made now. (With no
                # peer to ask, it is made when the child here is free: the newest bids.)
                job = await make()
                if job is None:
                    return
                try:
                    theirs = await self.remote.decide(peer, decider, job)
                except AsideError as e:
                    log.info("%s: planning on %s failed (%s): planning here", name, peer, e)
                else:
                    await asyncio.to_thread(keep, taken[0][2], theirs)
                    self.planned_on_peers += 1
                    self._landed(name, since)
                    return
            if self.aside is not None and self.aside.broken is None:
                try:
                    hit = await self.aside.decide_when_free(make, since)
                except AsideError as e:
                    log.warning("planning aside failed (%s): planning in a thread", e)
                else:
                    if hit is not None and taken:
                        await asyncio.to_thread(keep, taken[0][2], hit)
                        self._landed(name, since)
                    return
            if taken:
                pending: Pending | None = taken[0]
            else:
                self.wanted.pop(key, None)  # before the take, as in make()
                pending = await asyncio.to_thread(take)
            if pending is not None:
                await asyncio.to_thread(plan_here, pending)
                self._landed(name, since)

        async def run() -> None:
            try:
                while key in self.wanted:
                    try:
                        await one(self.wanted[key])
                    except Exception:  # a failed refresh leaves the stale plan in use
                        log.exception("planning the new bids in the background failed")
                        self.wanted.pop(key, None)
            finally:
                self._running.discard(key)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _landed(self, strategy: str, since: float) -> None:
        self.planned += 1
        waited = self.aside.clock() - since if self.aside is not None else 0.0
        log.info(
            "%s: a plan for the newest moved bids made in the background, %.1f s after a "
            "stale plan first stood in for it",
            strategy,
            waited,
        )

    async def close(self) -> None:
        """Stop planning in the background (the daemon is stopping)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5.0)
        if self.aside is not None:
            await self.aside.close()


__all__ = ["Refresher"]

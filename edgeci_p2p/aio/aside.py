"""The child process that plans off the request's path (``auction/aside.py`` says why).

One child per daemon, started with it (:meth:`PlanningAside.start`; else at its first
job) and kept: a job is one JSON line to
its stdin, its answer one JSON line from its stdout, one job at a time. While the
daemon serves work the child is stopped (``SIGSTOP``; ``auction/aside.py``'s
:func:`~edgeci_p2p.auction.aside.hold` says when), so that a plan for later never
takes CPU from a request now. A child that dies in a job is replaced at the next
one (:data:`MAX_RESTARTS` times); if none can start, or they keep dying,
:attr:`PlanningAside.broken` says why and the auctioneer plans in a thread as it did
before (a stale plan is never kept for want of a child).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import edgeci_p2p
from edgeci_p2p.auction.aside import PATIENCE_S, entry, hold
from edgeci_p2p.auction.decider import Entry

log = logging.getLogger("edgeci.auction")

ANSWER_LIMIT = 64 * 1024 * 1024
"""Bytes one answer line may hold (a plan and its work items: kilobytes)."""
START_TIMEOUT_S = 60
"""Seconds the child may take to start (Python and the planners' imports: ~0.1 s)."""
POLL_S = 0.01
"""How often a job in flight looks whether the daemon is busy (one CFS period), when
no event says so (``changed`` None)."""
LOOK_S = 1.0
"""With ``changed``: the longest a job in flight goes without looking (a change that
was not signalled is caught this late at worst)."""


MAX_RESTARTS = 3
"""Children that died in a job are replaced this many times; then the auctioneer plans
in a thread (something kills them, and a fourth would fare no better)."""


class AsideError(RuntimeError):
    """The child could not be started, died, or answered with an error."""


class PlanningAside:
    """Feeds planning jobs to a child process of the lowest CPU priority, stopped while
    ``busy()`` says the daemon serves work."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        busy: Callable[[], bool] = lambda: False,
        patience_s: float = PATIENCE_S,
        clock: Callable[[], float] = time.monotonic,
        changed: asyncio.Event | None = None,
    ) -> None:
        self.command = list(command or [sys.executable, "-m", "edgeci_p2p.auction.aside"])
        self.busy, self.patience_s, self.clock = busy, patience_s, clock
        """Whether the daemon serves work now; how long a job waits for it to stop."""
        self.changed = changed
        """Set by the daemon when ``busy()`` may have changed (the node's
        ``Load.changed``); None: look every :data:`POLL_S`. Polling kept a busy
        auctioneer's loop waking 100 times a second for as long as a job was held
        (seconds, during requests): ~10% of its loop's time on the emulated cluster."""
        self.held = asyncio.Event()
        """Set while the child is stopped for the daemon's work (for tests)."""
        self.waiting = asyncio.Event()
        """Set while a job waits for the child to be free before it is made (for tests)."""
        self.broken: str | None = None
        """Why no child can be used (then the auctioneer plans in a thread)."""
        self.jobs = 0
        """Decisions the child has made (for tests and the logs)."""
        self.deaths = 0
        """Children that died in a job (each replaced, up to :data:`MAX_RESTARTS`)."""
        self.running = False
        """A job is in flight and the child is not stopped: it takes CPU now."""
        self.ran_until = float("-inf")
        """When (:attr:`clock`) the child last stopped taking CPU for a job."""
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the child now, before the daemon serves work. Started at its first job,
        its start (Python and the planners' imports, ~0.1 s of one core, not stopped:
        there is no job to hold yet) ran inside a request and inside the auctioneer's
        own CPU quota: on the emulated cluster that request took 1.6-1.8x the others,
        and its slow strips moved the auctioneer's calibration 1.46x for a minute. A
        child that cannot start leaves :attr:`broken` set, as at a first job."""
        async with self._lock:
            with contextlib.suppress(AsideError):
                await self._started()

    async def decide(self, job: Mapping[str, Any], since: float | None = None) -> Entry:
        """The decision ``job`` asks for (raises :class:`AsideError`); ``since`` (on
        :attr:`clock`): when it was wanted, which the patience counts from (default:
        now; a job may first wait for the one before it)."""
        got = await self._decide(_ready(job), since, wait=False)
        assert got is not None
        return got

    async def decide_when_free(
        self, make: Callable[[], Awaitable[Mapping[str, Any] | None]], since: float | None = None
    ) -> Entry | None:
        """The decision of the job ``make()`` gives once the child is free to take CPU
        for it: the jobs before it done, and the daemon idle or ``since`` a patience
        ago (None, if ``make`` then has nothing to plan).

        A job made when it is wanted plans figures that a busy daemon's next rounds
        move on from while it waits: on the emulated cluster, where the daemon is never
        idle, each job waited out its 30 s of patience, up to four jobs of one decider
        queued for the same figures, and the requests ran plans that their own bids
        priced 8-17% slower (medians of runs) than plans made for them
        (docs/cluster-benchmark.md, twenty-fourth session). Made when the child can
        start on it, a job plans the newest figures."""
        return await self._decide(make, since, wait=True)

    async def _decide(
        self,
        make: Callable[[], Awaitable[Mapping[str, Any] | None]],
        since: float | None,
        wait: bool,
    ) -> Entry | None:
        since = self.clock() if since is None else since
        async with self._lock:
            proc = await self._started()
            assert proc.stdin is not None and proc.stdout is not None
            if wait:
                await self._until_free(since)
            job = await make()
            if job is None:
                return None
            try:
                proc.stdin.write(json.dumps(job).encode() + b"\n")
                await proc.stdin.drain()
                line = await self._answer(proc, since)
            except asyncio.CancelledError:
                # An answer may still come: the next job must not read it as its own.
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                self._proc = None
                raise
            except OSError as e:  # a broken pipe: it died before it read the job
                why = f"the planning child failed: {e} ({await _how_it_ended(proc)})"
                await self._died(why)
                raise AsideError(why) from e
            except ValueError as e:  # a line over the limit
                await self._lost(f"the planning child failed: {e}")
                raise AsideError(self.broken) from e
            if not line:
                why = f"the planning child exited ({await _how_it_ended(proc)})"
                await self._died(why)
                raise AsideError(why)
        self.jobs += 1
        try:
            return entry(json.loads(line))
        except (ValueError, KeyError, TypeError) as e:
            raise AsideError(str(e)) from e

    def disturbing(self, within_s: float = 0.0) -> bool:
        """Whether the child takes CPU for a job now, or did in the last ``within_s``
        seconds: a piece of the daemon's that ran then shared its CPU with a plan (all
        of a quota's idle moments, at ``SCHED_IDLE``). Calibrating on such pieces
        slowed the peer's bids, which asked for the next plan, which slowed the next
        pieces. A piece that starts after the child was stopped for it is not."""
        return self.running or self.clock() - self.ran_until < within_s

    async def _until_free(self, since: float) -> None:
        """Until :func:`~edgeci_p2p.auction.aside.hold` would let a job sent at ``since``
        run now."""
        try:
            while True:
                if self.changed is not None:
                    self.changed.clear()  # before busy(): a change after it wakes us
                if not hold(self.busy(), since, self.clock(), self.patience_s):
                    return
                self.waiting.set()
                left = max(since + self.patience_s - self.clock(), 0.0)
                if self.changed is None:
                    await asyncio.sleep(min(POLL_S, left))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(LOOK_S, left))
        finally:
            self.waiting.clear()

    def _mark(self, running: bool) -> None:
        if self.running and not running:
            self.ran_until = self.clock()
        self.running = running

    async def _answer(self, proc: asyncio.subprocess.Process, since: float) -> bytes:
        """The child's answer line, the child stopped while the daemon is busy."""
        assert proc.stdout is not None
        reading = asyncio.ensure_future(proc.stdout.readline())
        held = False
        try:
            while not reading.done():
                if self.changed is not None:
                    self.changed.clear()  # before busy(): a change after it wakes us
                want = hold(self.busy(), since, self.clock(), self.patience_s)
                if want != held:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGSTOP if want else signal.SIGCONT)
                    held = want
                    (self.held.set if held else self.held.clear)()
                self._mark(not held)
                await self._next_look(reading, held, since)
            return reading.result()
        finally:
            self._mark(False)
            reading.cancel()
            if held:
                self.held.clear()
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)

    async def _next_look(self, reading: asyncio.Future[bytes], held: bool, since: float) -> None:
        """Until the answer comes, ``busy()`` may have changed, or (held) the job's
        patience runs out."""
        if self.changed is None:
            await asyncio.wait([reading], timeout=POLL_S)
            return
        timeout = LOOK_S
        if held:
            timeout = min(timeout, max(since + self.patience_s - self.clock(), 0.0))
        changed = asyncio.ensure_future(self.changed.wait())
        either: list[asyncio.Future[Any]] = [reading, changed]
        try:
            await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()

    async def _started(self) -> asyncio.subprocess.Process:
        if self.broken is not None:
            raise AsideError(self.broken)
        if self._proc is None:
            # The child imports this package the way this process did, installed or not.
            root = str(Path(edgeci_p2p.__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": path},
                    limit=ANSWER_LIMIT,
                )
            except OSError as e:
                self.broken = f"cannot start the planning child ({e})"
                raise AsideError(self.broken) from e
            assert self._proc.stdout is not None
            try:  # ready: bound to this process (``bound_to_parent``)
                ready = await asyncio.wait_for(self._proc.stdout.readline(), START_TIMEOUT_S)
            except TimeoutError:
                ready = b"no answer in %d s" % START_TIMEOUT_S
            if not ready.startswith(b'{"ready"'):
                await self._lost(f"the planning child did not start ({ready[:200]!r})")
                raise AsideError(self.broken)
            log.info("planning child %d started (%s)", self._proc.pid, json.loads(ready)["ready"])
        return self._proc

    async def _died(self, why: str) -> None:
        """The child died in a job: a new one starts at the next job, up to
        :data:`MAX_RESTARTS` times. Once, on an otherwise quiet emulated cluster, one
        ended with no word on its stderr, and its auctioneer planned in a thread (on
        its own loop's GIL and quota, ~20 ms of CPU a request) for good."""
        self.deaths += 1
        if self.deaths > MAX_RESTARTS:
            await self._lost(f"{why}; {self.deaths} children died")
            return
        log.warning("%s; a new one starts at the next job", why)
        await self.close()

    async def _lost(self, why: str) -> None:
        self.broken = why
        log.warning("%s; planning in a thread from now on", why)
        await self.close()

    async def close(self) -> None:
        """Stop the child (closing its stdin ends its loop)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _ready(job: Mapping[str, Any]) -> Callable[[], Awaitable[Mapping[str, Any] | None]]:
    async def make() -> Mapping[str, Any] | None:
        return job

    return make


async def _how_it_ended(proc: asyncio.subprocess.Process) -> str:
    """Its exit status or the signal that ended it: its stdout closes a moment before
    the exit is reaped (the return code read at once was None)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 1.0)
    code = proc.returncode
    if code is None:
        return "still running, its output closed"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"


__all__ = ["AsideError", "PlanningAside"]

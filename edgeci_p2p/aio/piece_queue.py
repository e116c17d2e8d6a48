"""A strip job's pieces queued for the compute worker, which goes from one to the next
without its event loop (``aio/strips.py``).

Handed over one or two at a time (``run_in_executor``), the pieces left the worker idle
whenever it finished before the loop had taken the last one back and handed it the
next. On a capped peer the loop's turn comes when the quota the worker spends allows:
on the emulated cluster the helpers' workers idled 4-18 ms at such hops, 56-120 ms of a
halo request's critical path. Here the job pushes every piece whose rows are in (or
are being computed by a piece ahead of it on this queue), and the worker, once a piece
is done, takes the next itself: the first by ``key`` of those whose ``after`` pieces
have run. It goes back to the executor only when none is ready, and it never waits
for rows on the worker thread, which other requests' work shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from edgeci_p2p.aio.timed import timed

Timed = tuple[Any, float, float, float]
"""What :func:`edgeci_p2p.aio.timed.timed` returns: the result, when it started and
stopped (``time.monotonic``), and the CPU the process's other threads ran meanwhile."""


@dataclass(eq=False)
class Queued:
    """A piece of work on the queue, and then what became of it."""

    key: tuple[int, ...]
    """Lowest first, of those ready."""
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    after: tuple[Queued, ...]
    """Pieces it reads the output of: it runs once they have."""
    future: asyncio.Future[Timed]
    handed: float
    """When it was pushed (``time.monotonic``)."""
    ran: bool = False
    continued: bool = False
    """The worker took it straight after another piece of this queue (its time starts
    when it started, not when it was handed over)."""
    went_on: bool = False
    """The worker took another piece of this queue straight after it (its hop back to
    the loop ran beside that piece)."""


@dataclass(eq=False)
class PieceQueue:
    """One strip job's pieces for ``worker`` (a one-thread executor)."""

    loop: asyncio.AbstractEventLoop
    worker: Executor
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _items: list[Queued] = field(default_factory=list)
    _active: bool = False
    """A run of this queue is on the worker, or submitted to it."""

    def push(
        self, key: tuple[int, ...], fn: Callable[..., Any], *args: Any, after: Iterable[Queued] = ()
    ) -> Queued:
        """Event loop: queue ``fn(*args)``; its future gets :data:`Timed` or its error."""
        item = Queued(key, fn, args, tuple(after), self.loop.create_future(), time.monotonic())
        with self._lock:
            self._items.append(item)
            start, self._active = not self._active, True
        if start:
            try:
                self.worker.submit(self._run)
            except BaseException:  # the worker is shut down: nothing runs this queue
                with self._lock:
                    self._items.remove(item)
                    self._active = False
                raise
        return item

    def close(self) -> None:
        """Event loop: drop what has not started (a failed job's pieces: not run)."""
        with self._lock:
            self._items.clear()

    def _take(self) -> Queued | None:
        """Under the lock: the next piece to run, or None (this run of the queue ends)."""
        ready = [q for q in self._items if all(a.ran for a in q.after)]
        if not ready:
            self._active = False
            return None
        item = min(ready, key=lambda q: q.key)
        self._items.remove(item)
        return item

    def _run(self) -> None:
        """Worker thread: run what is ready, one after another, until nothing is."""
        with self._lock:
            item = self._take()
        while item is not None:
            got: Timed | None = None
            error: BaseException | None = None
            try:
                got = timed(item.fn, *item.args)
            except BaseException as e:  # handed to the job, which raises it
                error = e
            with self._lock:
                item.ran = True
                nxt = self._take()
                item.went_on = nxt is not None
                if nxt is not None:
                    nxt.continued = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: no one waits
                self.loop.call_soon_threadsafe(_settle, item.future, got, error)
            item = nxt


def _settle(future: asyncio.Future[Timed], got: Timed | None, error: BaseException | None) -> None:
    if future.done():  # cancelled: the job failed meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert got is not None
        future.set_result(got)

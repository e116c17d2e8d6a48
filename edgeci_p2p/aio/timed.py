"""The compute worker thread: made and named (:func:`worker_pool`), and a piece of work
timed on it (wall time, and the CPU the daemon's other threads took meanwhile:
``policy/calibration.py``'s ``own_seconds``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

WORKER_NAME = "edgeci-tile"
"""The worker thread's name, in Python and in the OS (``/proc/<pid>/task/<tid>/comm``,
``top -H``): a capped peer's event loop spends the same quota as its convolutions, and
``benchmarks/peer_cpu.py`` tells the two apart by it."""

_PR_SET_NAME = 15


def name_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS as well (Linux ``prctl``, 15 bytes at
    most; elsewhere nothing): Python names only its own ``Thread`` objects."""
    if not sys.platform.startswith("linux"):
        return
    # No libc symbols to call: the thread keeps the process's name.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def lower_thread_priority(nice: int) -> None:
    """Give the calling thread niceness ``nice`` (Linux: a thread id is a process id to
    ``setpriority``, so only this thread moves; raising one's own niceness needs no
    privilege). Elsewhere, or refused: nothing."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def _worker_start(nice: int) -> None:
    name_thread(WORKER_NAME)
    lower_thread_priority(nice)


def worker_pool(nice: int = 0) -> ThreadPoolExecutor:
    """The one compute worker thread, named :data:`WORKER_NAME` (in the OS too), at
    niceness ``nice``.

    A niced worker leaves the CPU to the event loop whenever the loop has work: on a
    peer capped at a fraction of a core, the halo rows a neighbour waits for, the
    answers to bids, the next piece handed to the worker all went out only as fast as
    the loop's half of the quota beside a busy worker allowed. The loop sleeps most of
    the time, and then the worker has the whole quota, niced or not. On the emulated
    cluster, niced 10, the halo waits fell by 45% but the latency did not move (the
    worker waits for the loop instead): the daemon's default is 0."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix=WORKER_NAME,
        initializer=_worker_start,
        initargs=(nice,),
    )


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float, float, float]:
    """Worker thread: ``fn(*args)``, when it started and stopped (``time.monotonic``),
    and the CPU seconds the process's other threads ran meanwhile (``Node.served``)."""
    started, cpu, own = time.monotonic(), time.process_time(), time.thread_time()
    out = fn(*args)
    stopped = time.monotonic()
    others = (time.process_time() - cpu) - (time.thread_time() - own)
    return out, started, stopped, max(0.0, others)

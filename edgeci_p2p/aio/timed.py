"""The compute worker thread: made and named (:func:`worker_pool`), and a piece of work
timed on it (wall time, and the CPU the daemon's other threads took meanwhile:
``policy/calibration.py``'s ``own_seconds``)."""

from __future__ import annotations

import contextlib
import ctypes
import sys
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


def worker_pool() -> ThreadPoolExecutor:
    """The one compute worker thread, named :data:`WORKER_NAME` (in the OS too)."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix=WORKER_NAME,
        initializer=name_thread,
        initargs=(WORKER_NAME,),
    )


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float, float, float]:
    """Worker thread: ``fn(*args)``, when it started and stopped (``time.monotonic``),
    and the CPU seconds the process's other threads ran meanwhile (``Node.served``)."""
    started, cpu, own = time.monotonic(), time.process_time(), time.thread_time()
    out = fn(*args)
    stopped = time.monotonic()
    others = (time.process_time() - cpu) - (time.thread_time() - own)
    return out, started, stopped, max(0.0, others)

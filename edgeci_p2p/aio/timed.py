"""Timing a piece of work on the worker thread (wall time, and the CPU the daemon's
other threads took meanwhile: ``policy/calibration.py``'s ``own_seconds``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float, float, float]:
    """Worker thread: ``fn(*args)``, when it started and stopped (``time.monotonic``),
    and the CPU seconds the process's other threads ran meanwhile (``Node.served``)."""
    started, cpu, own = time.monotonic(), time.process_time(), time.thread_time()
    out = fn(*args)
    stopped = time.monotonic()
    others = (time.process_time() - cpu) - (time.thread_time() - own)
    return out, started, stopped, max(0.0, others)

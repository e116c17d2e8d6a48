"""How much memory a peer may spend on weights and work, and how much it holds.

The budget is, in order: ``--memory-limit`` (a person's choice, taken as given);
else the room left under this process's cgroup memory limit; else the machine's
available memory (``MemAvailable``); the measured two less a margin, for the
allocator, the Python heap and the other programs on a small device. It is
measured once at start, after torch is imported and before any weights load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeci_p2p.hostinfo import CGROUP_ROOT, PROC_CGROUP, PROC_MOUNTINFO, cgroup_dirs

PROC_MEMINFO = Path("/proc/meminfo")
PROC_SELF_STATUS = Path("/proc/self/status")

MARGIN_BYTES = 64 << 20
MARGIN_FRACTION = 0.10
"""A measured budget is what is free less max(MARGIN_BYTES, MARGIN_FRACTION of it)."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"300M"``, ``"1.5G"``, ``"1048576"`` (binary units, an optional ``B``/``iB``)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 300M, 1.5G, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _kib_field(text: str, key: str) -> int | None:
    m = re.search(rf"^{key}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def vm_rss(status: Path = PROC_SELF_STATUS) -> int | None:
    """Resident memory (VmRSS) of a process, bytes; ``/proc/<pid>/status``."""
    try:
        return _kib_field(status.read_text(), "VmRSS")
    except OSError:
        return None


def mem_available(meminfo: Path = PROC_MEMINFO) -> int | None:
    try:
        return _kib_field(meminfo.read_text(), "MemAvailable")
    except OSError:
        return None


def cgroup_room(
    proc_cgroup: Path = PROC_CGROUP,
    root: Path = CGROUP_ROOT,
    mountinfo: Path | None = PROC_MOUNTINFO,
) -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 ``memory.max`` less
    ``memory.current``, v1 ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``),
    the tightest from its cgroup up to the top, on the hierarchies the CPU quota is
    read from (:func:`edgeci_p2p.hostinfo.cgroup_dirs`); None when no limit is visible."""
    rooms = (_room_at(d, v) for d, v in cgroup_dirs("memory", proc_cgroup, root, mountinfo))
    return min((r for r in rooms if r is not None), default=None)


def _room_at(d: Path, version: int) -> int | None:
    """Bytes left under the memory limit one cgroup directory sets; None without one."""
    limit_f, usage_f = (
        ("memory.max", "memory.current")
        if version == 2
        else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    )
    try:
        limit_s = (d / limit_f).read_text().strip()
        usage = int((d / usage_f).read_text())
        # v1 says "no limit" with a huge number (PAGE_COUNTER_MAX pages).
        if limit_s == "max" or int(limit_s) >= 1 << 60:
            return None
        return max(0, int(limit_s) - usage)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Budget:
    bytes: int
    source: str
    """'--memory-limit', 'cgroup' or 'available'."""


def less_margin(free: int) -> int:
    return max(0, free - max(MARGIN_BYTES, int(MARGIN_FRACTION * free)))


def memory_budget(
    limit: int | None,
    room: int | None = None,
    available: int | None = None,
) -> Budget | None:
    """What a peer may spend on weights and work (see the module docstring); None when
    nothing can be measured. ``room`` and ``available`` default to this machine's."""
    if limit is not None:
        return Budget(limit, "--memory-limit")
    room = cgroup_room() if room is None else room
    if room is not None:
        return Budget(less_margin(room), "cgroup")
    available = mem_available() if available is None else available
    if available is not None:
        return Budget(less_margin(available), "available")
    return None


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``): tile
    work frees its activations, but glibc keeps the pages in each thread's arena, so
    a peer that has gone idle would otherwise keep its busiest moment's memory.
    False where there is no glibc."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the number of malloc arenas (malloc.h)."""


def one_malloc_arena(environ: Mapping[str, str] | None = None) -> bool:
    """Make glibc serve every thread of this process from one malloc arena (unless
    ``MALLOC_ARENA_MAX`` is set: a person's choice is kept). Call it before threads
    start. A peer's event loop, worker and executor threads each get an arena of their
    own, and after tile work the trimmed heap still kept 17-30 MB of their fragments,
    a third of a 100 MB budget; with one arena it keeps 2-6 MB (``benchmarks/memory.py``).
    The shared arena's lock cost VGG-16 requests x1.02 in latency
    (``benchmarks/malloc_arenas.py``, 6 fresh pairs of 3-peer clusters), so
    ``edgeci-peer`` asks for it only under ``--memory-limit``. False where there is
    no glibc or the variable is set."""
    env = os.environ if environ is None else environ
    if "MALLOC_ARENA_MAX" in env:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False

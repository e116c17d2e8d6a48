"""Facts about the host a peer runs on that a short benchmark cannot see."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path


def cpu_quota_cores(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup in cores (None: no quota).

    A profiler's runs of a few milliseconds fit inside one CFS period's quota, so
    a peer capped at 0.2 of a core measures itself at full speed; bids must be
    scaled by the quota instead. Reads cgroup v1 (``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``) and v2 (``cpu.max``).
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2
            try:
                quota, period = (root / rel / "cpu.max").read_text().split()[:2]
            except (OSError, ValueError):
                continue
            if quota != "max":
                return int(quota) / int(period)
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                d = root / mount / rel
                try:
                    quota_us = int((d / "cpu.cfs_quota_us").read_text())
                    period_us = int((d / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                return quota_us / period_us if quota_us > 0 else None
    return None


THROTTLE_GAP = 0.005
"""A pause of the spinning thread at least this long (seconds) counts as a CFS throttle:
a quota of q cores over a period P stops the thread for (1 - q) P, 40 ms at 0.6 of a
core over 100 ms; a scheduler time slice lost to another thread is a few ms."""


def share_between_throttles(
    resumes: Sequence[tuple[float, float]], start: tuple[float, float], end: tuple[float, float]
) -> float:
    """CPU time over wall time of a spin, from (wall, cpu) clock readings.

    ``resumes`` are the readings taken when the thread ran again after a throttle
    (:data:`THROTTLE_GAP`). A throttled thread resumes at the start of a CFS period,
    so between the first and the last resume lie whole periods, and in each the
    thread got exactly its quota: their ratio is the quota, whatever the quota left
    in the period the spin began in (a profiler that ran just before used it up, a
    quiet peer has all of it). Without two resumes (no quota, or too short a spin)
    the ratio over the whole spin is all there is.
    """
    if len(resumes) >= 2 and resumes[-1][0] > resumes[0][0]:
        (w0, c0), (w1, c1) = resumes[0], resumes[-1]
    else:
        (w0, c0), (w1, c1) = start, end
    wall = w1 - w0
    return min(1.0, max(0.0, (c1 - c0) / wall)) if wall > 0 else 1.0


def measured_cpu_share(
    seconds: float = 0.35,
    wall_clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = time.thread_time,
) -> float:
    """The share of one core this thread actually gets, measured by spinning.

    Where the cgroup files are not visible (``ip netns exec`` remounts /sys),
    CPU time over wall time of a busy loop still shows a quota (or a machine so
    loaded that a peer cannot keep its promises at full speed). Measured between
    throttles (:func:`share_between_throttles`), so 0.35 s (three 100 ms periods)
    give the quota itself, not the quota plus or minus what the period the spin
    started in had left.
    """
    start = (wall_clock(), cpu_clock())
    end_at = start[0] + seconds
    resumes: list[tuple[float, float]] = []
    last = start[0]
    while True:
        now = wall_clock()
        if now - last >= THROTTLE_GAP:
            resumes.append((now, cpu_clock()))
        last = now
        if now >= end_at:
            break
    return share_between_throttles(resumes, start, (last, cpu_clock()))

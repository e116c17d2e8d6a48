"""Facts about the host a peer runs on that a short benchmark cannot see."""

from __future__ import annotations

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


def measured_cpu_share(seconds: float = 0.3) -> float:
    """The share of one core this thread actually gets, measured by spinning.

    Where the cgroup files are not visible (``ip netns exec`` remounts /sys),
    CPU time over wall time of a busy loop still shows a quota (or a machine so
    loaded that a peer cannot keep its promises at full speed).
    """
    import time

    wall0, cpu0 = time.perf_counter(), time.thread_time()
    end = wall0 + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1
    wall = time.perf_counter() - wall0
    return min(1.0, (time.thread_time() - cpu0) / wall) if wall > 0 else 1.0

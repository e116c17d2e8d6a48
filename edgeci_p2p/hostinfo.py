"""Facts about the host a peer runs on that a short benchmark cannot see."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy: where it is mounted, which cgroup its top shows
    (``/`` unless a container bind-mounted a sub-tree), v1 or v2, and for v1 the
    controllers it carries."""

    path: Path
    root: str
    version: int
    controllers: frozenset[str] = frozenset()


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


V1_CONTROLLERS = frozenset(
    [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ]
)
"""The v1 controllers; a v1 mount's other options (xattr, name=systemd, ...) are not."""


def cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup hierarchies in a ``/proc/<pid>/mountinfo`` text."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        fstype, options = rest[0], rest[2].split(",")
        if fstype == "cgroup2":
            mounts.append(CgroupMount(Path(_unescape(fields[4])), _unescape(fields[3]), 2))
        elif fstype == "cgroup":
            ctl = frozenset(options) & V1_CONTROLLERS
            mounts.append(CgroupMount(Path(_unescape(fields[4])), _unescape(fields[3]), 1, ctl))
    return mounts


def conventional_mounts(root: Path = CGROUP_ROOT) -> list[CgroupMount]:
    """Where distributions mount the hierarchies, for when mountinfo cannot be read:
    v2 at ``root`` (or ``root/unified`` beside v1), v1's cpu controller at
    ``root/cpu`` or ``root/cpu,cpuacct``, v1's memory controller at ``root/memory``."""
    cpu = frozenset({"cpu", "cpuacct"})
    return [
        CgroupMount(root, "/", 2),
        CgroupMount(root / "unified", "/", 2),
        CgroupMount(root / "cpu", "/", 1, cpu),
        CgroupMount(root / "cpu,cpuacct", "/", 1, cpu),
        CgroupMount(root / "cpuacct,cpu", "/", 1, cpu),
        CgroupMount(root / "memory", "/", 1, frozenset({"memory"})),
    ]


def _quota_at(d: Path, version: int) -> float | None:
    """The quota set in one cgroup directory, in cores; None when it sets none."""
    try:
        if version == 2:
            quota, period = (d / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((d / "cpu.cfs_quota_us").read_text())
        period_us = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _dirs_up(mount: CgroupMount, cgroup_path: str) -> Iterator[Path]:
    """The cgroup's own directory under ``mount`` and each parent up to the mount's top."""
    path, top = PurePosixPath(cgroup_path), PurePosixPath(mount.root)
    try:
        rel = path.relative_to(top)
    except ValueError:
        return  # a cgroup this mount does not show
    d = mount.path / rel
    if not (d / "cgroup.procs").is_file():
        return  # not mounted here (a bare directory, or an empty /sys)
    while True:
        yield d
        if d == mount.path:
            return
        d = d.parent


def quota_in(mount: CgroupMount, cgroup_path: str) -> tuple[bool, float | None]:
    """(whether the cgroup is visible under ``mount``, the tightest quota on the way
    from it up to the mount's top, in cores). A quota on a parent caps its children too:
    a container limited to 2 cores whose process sits in a sub-group without a quota
    still gets 2."""
    found, tightest = False, None
    for d in _dirs_up(mount, cgroup_path):
        found = True
        q = _quota_at(d, mount.version)
        if q is not None and (tightest is None or q < tightest):
            tightest = q
    return found, tightest


def cpu_quota_cores(
    proc_cgroup: Path = PROC_CGROUP,
    root: Path = CGROUP_ROOT,
    mountinfo: Path | None = PROC_MOUNTINFO,
) -> float | None:
    """The CPU quota of this process's cgroup in cores (None: no quota, or none visible).

    A profiler's runs of a few milliseconds fit inside one CFS period's quota, so
    a peer capped at 0.2 of a core measures itself at full speed; bids must be
    scaled by the quota instead. Reads cgroup v1 (``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``) and v2 (``cpu.max``, "QUOTA PERIOD" or "max PERIOD"), on
    the hierarchies ``mountinfo`` lists (found through their mount points, so a
    hybrid host's v2 at ``/sys/fs/cgroup/unified`` and a container's bind-mounted
    sub-tree work too) and, failing that, where they are usually mounted under
    ``root``. The quota is the tightest between the process's own cgroup and the top.

    Inside ``ip netns exec`` the cgroup file systems are gone (it mounts a fresh /sys);
    the emulation therefore enters a peer's network namespace with ``nsenter --net``,
    which keeps them.
    """
    quotas = (_quota_at(d, v) for d, v in cgroup_dirs("cpu", proc_cgroup, root, mountinfo))
    return min((q for q in quotas if q is not None), default=None)


def cpu_limits_visible(
    proc_cgroup: Path = PROC_CGROUP,
    root: Path = CGROUP_ROOT,
    mountinfo: Path | None = PROC_MOUNTINFO,
) -> bool:
    """Whether this process can read the CPU limit of its cgroup or a parent's: a
    ``cpu.max`` (v2) or ``cpu.cfs_quota_us`` (v1) on the way up. When it can and
    :func:`cpu_quota_cores` finds none, the process has no quota, whatever a spin on a
    busy machine would make of its share (:func:`effective_quota`)."""
    return any(
        (d / ("cpu.max" if v == 2 else "cpu.cfs_quota_us")).is_file()
        for d, v in cgroup_dirs("cpu", proc_cgroup, root, mountinfo)
    )


def cgroup_dirs(
    controller: str,
    proc_cgroup: Path = PROC_CGROUP,
    root: Path = CGROUP_ROOT,
    mountinfo: Path | None = PROC_MOUNTINFO,
) -> list[tuple[Path, int]]:
    """This process's cgroup directories for ``controller`` (``cpu``, ``memory``), each
    with its hierarchy's version: for every line of ``proc_cgroup`` that is v2 or a v1
    hierarchy carrying the controller, the first mount that shows the cgroup (from
    ``mountinfo``, else where hierarchies are usually mounted under ``root``), its own
    directory first, then each parent up to the mount's top. A limit on a parent caps
    its children too, so readers take the tightest over all of them."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    mounts: list[CgroupMount] = []
    if mountinfo is not None:
        try:
            mounts = cgroup_mounts(mountinfo.read_text())
        except OSError:
            mounts = []
    mounts += conventional_mounts(root)
    out: list[tuple[Path, int]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            candidates = [m for m in mounts if m.version == 2]
        elif controller in controllers.split(","):
            candidates = [m for m in mounts if m.version == 1 and controller in m.controllers]
        else:
            continue
        for m in candidates:
            dirs = list(_dirs_up(m, path))
            if dirs:  # the first mount that shows the cgroup is the one to read
                out += [(d, m.version) for d in dirs]
                break
    return out


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
    CPU time over wall time of a busy loop still shows a quota (and, as much, whatever
    else ran on the cores meanwhile: :func:`effective_quota` asks it only there).
    Measured between throttles (:func:`share_between_throttles`), so 0.35 s (three
    100 ms periods) give the quota itself, not the quota plus or minus what the period
    the spin started in had left.
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


SHARE_OF_A_QUOTA = 0.85
"""A spin's share below this reads as a quota (:func:`effective_quota`)."""


def effective_quota(
    threads: int,
    quota: Callable[[], float | None] = cpu_quota_cores,
    visible: Callable[[], bool] = cpu_limits_visible,
    spin: Callable[[], float] = measured_cpu_share,
) -> float | None:
    """The cores this peer's ``threads`` may use when fewer than they ask for: the
    cgroup's quota where one can be read; where the cgroup files are hidden (``ip netns
    exec`` mounts a fresh /sys), the share a spin gets (:func:`measured_cpu_share`);
    None for no limit.

    A spin is not asked where the files show no quota. On a machine busy for a moment
    it reads the moment as a limit, and the peer keeps it for life: of the demo's three
    peers starting together on two cores, the first measured 0.50 of a core while the
    others loaded their weights, and bid twice its real times, so its plans predicted
    up to 137 ms for requests served in 84-89 (a spin on a quiet machine said no
    limit, and 74). Load that lasts is what each peer's online calibration
    (``policy/calibration.py``) learns from the work it serves."""
    q = quota()
    if q is not None or visible():
        return q
    share = spin()
    return share * threads if share < SHARE_OF_A_QUOTA else None


MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def machine_id(files: Sequence[Path] = MACHINE_ID_FILES) -> str:
    """An id of this machine for bids (peers on one machine share its cores): a hash of
    the OS's machine id (never the id itself), else of the host name."""
    for f in files:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text:
            return hashlib.sha256(b"edgeci-host:" + text.encode()).hexdigest()[:16]
    return hashlib.sha256(b"edgeci-host:" + socket.gethostname().encode()).hexdigest()[:16]


def machine_cpus() -> float:
    """Cores of this machine (all of them, whatever this process may use)."""
    return float(os.cpu_count() or 1)


def one_cpu(quota: float | None) -> float | None:
    """The cores this process's threads share, when at most one: its CPU quota, or
    the cores it may run on (one on a single-core board, or pinned to one); None when
    its threads can run side by side."""
    try:
        usable = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        usable = machine_cpus()
    shared = usable if quota is None else min(quota, usable)
    return shared if shared <= 1.0 else None

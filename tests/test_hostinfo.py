"""cgroup CPU quota detection on fake /proc and /sys trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci_p2p.hostinfo import (
    CgroupMount,
    cgroup_mounts,
    cpu_limits_visible,
    cpu_quota_cores,
    effective_quota,
    measured_cpu_share,
    quota_in,
    share_between_throttles,
)


def _cgroup(d: Path, **files: str) -> Path:
    """A directory that looks like a cgroup (it has ``cgroup.procs``), with ``files``
    (``cpu_max`` stands for ``cpu.max``)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup.procs").write_text("")
    for name, text in files.items():
        (d / name.replace("_", ".", 1)).write_text(text)
    return d


def _v1(d: Path, quota_us: int, period_us: int = 100_000) -> Path:
    return _cgroup(d, cpu_cfs_quota_us=f"{quota_us}\n", cpu_cfs_period_us=f"{period_us}\n")


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/x\n4:cpu,cpuacct:/edgeci-bench/peer2\n")
    sys = tmp_path / "sys"
    _v1(sys / "cpu,cpuacct", -1)
    _v1(sys / "cpu,cpuacct" / "edgeci-bench", -1)
    d = _v1(sys / "cpu,cpuacct" / "edgeci-bench" / "peer2", 30000)
    assert cpu_quota_cores(proc, sys, mountinfo=None) == 0.3
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota_cores(proc, sys, mountinfo=None) is None


def test_cgroup_v1_short_period(tmp_path: Path) -> None:
    # The emulation's short CFS periods: 1333 us of every 10 ms is 0.1333 of a core.
    proc = tmp_path / "cgroup"
    proc.write_text("1:cpu:/edgeci-bench-3\n0::/\n")
    _v1(tmp_path / "sys" / "cpu", -1)
    _v1(tmp_path / "sys" / "cpu" / "edgeci-bench-3", 1333, 10_000)
    assert cpu_quota_cores(proc, tmp_path / "sys", mountinfo=None) == pytest.approx(0.1333)


def test_cgroup_v2_quota_and_none(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/peer\n")
    sys = tmp_path / "sys"
    _cgroup(sys)
    _cgroup(sys / "user.slice", cpu_max="max 100000\n")
    d = _cgroup(sys / "user.slice" / "peer", cpu_max="60000 100000\n")
    assert cpu_quota_cores(proc, sys, mountinfo=None) == 0.6
    (d / "cpu.max").write_text("max 100000\n")
    assert cpu_quota_cores(proc, sys, mountinfo=None) is None
    assert cpu_quota_cores(tmp_path / "missing", sys, mountinfo=None) is None
    # A group without the cpu controller has no cpu.max at all.
    (d / "cpu.max").unlink()
    assert cpu_quota_cores(proc, sys, mountinfo=None) is None


def test_cgroup_v2_a_parent_quota_caps_the_child(tmp_path: Path) -> None:
    # A container limited to 2 cores whose process sits in a sub-group with no quota
    # of its own gets 2 cores; a child quota tighter than its parent's wins.
    proc = tmp_path / "cgroup"
    proc.write_text("0::/box/inner\n")
    sys = tmp_path / "sys"
    _cgroup(sys)
    _cgroup(sys / "box", cpu_max="200000 100000\n")
    inner = _cgroup(sys / "box" / "inner", cpu_max="max 100000\n")
    assert cpu_quota_cores(proc, sys, mountinfo=None) == 2.0
    (inner / "cpu.max").write_text("4000 10000\n")
    assert cpu_quota_cores(proc, sys, mountinfo=None) == 0.4


MOUNTINFO_HYBRID = """\
24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 24 0:25 / /sys rw,nosuid - sysfs sysfs rw
31 30 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
34 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""


def test_mountinfo_lists_the_hierarchies() -> None:
    mounts = cgroup_mounts(MOUNTINFO_HYBRID)
    assert [(str(m.path), m.version) for m in mounts] == [
        ("/sys/fs/cgroup/unified", 2),
        ("/sys/fs/cgroup/systemd", 1),
        ("/sys/fs/cgroup/cpu,cpuacct", 1),
        ("/sys/fs/cgroup/memory", 1),
    ]
    assert mounts[2].controllers == {"cpu", "cpuacct"}
    assert mounts[1].controllers == frozenset()  # name=systemd is no controller
    escaped = "40 31 0:31 / /mnt/cg\\040v2 rw - cgroup2 none rw\n"
    assert cgroup_mounts(escaped)[0].path == Path("/mnt/cg v2")


def test_cgroup_v2_found_through_mountinfo_anywhere(tmp_path: Path) -> None:
    # cgroup2 mounted somewhere unusual: only mountinfo can say where.
    mnt = tmp_path / "elsewhere"
    _cgroup(mnt)
    _cgroup(mnt / "edgeci-bench-1", cpu_max="26667 100000\n")
    info = tmp_path / "mountinfo"
    info.write_text(f"50 24 0:40 / {mnt} rw - cgroup2 cgroup2 rw\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/edgeci-bench-1\n")
    assert cpu_quota_cores(proc, tmp_path / "nosys", info) == pytest.approx(0.26667)
    assert cpu_quota_cores(proc, tmp_path / "nosys", mountinfo=None) is None


def test_cgroup_v1_beside_an_empty_v2_on_a_hybrid_host(tmp_path: Path) -> None:
    # This machine's layout: v1 cpu at /sys/fs/cgroup/cpu, v2 (no controllers) at unified,
    # and /proc/self/cgroup lists both.
    sys = tmp_path / "sys"
    _cgroup(sys / "unified")
    _cgroup(sys / "unified" / "edgeci-bench-0")
    _v1(sys / "cpu", -1)
    _v1(sys / "cpu" / "edgeci-bench-0", 40000)
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/\n1:cpu:/edgeci-bench-0\n0::/edgeci-bench-0\n")
    assert cpu_quota_cores(proc, sys, mountinfo=None) == 0.4


def test_a_bind_mounted_subtree_is_read_relative_to_its_root(tmp_path: Path) -> None:
    # A container sees the host's /docker/abc at its /sys/fs/cgroup/cpu.
    mnt = tmp_path / "cpu"
    _v1(mnt, 50000)
    mount = CgroupMount(mnt, "/docker/abc", 1, frozenset({"cpu"}))
    assert quota_in(mount, "/docker/abc") == (True, 0.5)
    assert quota_in(mount, "/elsewhere") == (False, None)
    _v1(mnt / "sub", 80000)
    assert quota_in(mount, "/docker/abc/sub") == (True, 0.5)


def test_an_empty_sys_as_inside_ip_netns_exec(tmp_path: Path) -> None:
    # ip netns exec mounts a fresh sysfs: /sys/fs/cgroup is an empty directory.
    (tmp_path / "sys").mkdir()
    proc = tmp_path / "cgroup"
    proc.write_text("1:cpu:/edgeci-bench-0\n0::/\n")
    assert cpu_quota_cores(proc, tmp_path / "sys", mountinfo=None) is None


def test_measured_cpu_share_is_a_share() -> None:
    share = measured_cpu_share(0.05)
    assert 0.0 < share <= 1.0


class FakeCFS:
    """A thread spinning under a CFS quota: each wall-clock reading costs ``step`` of
    CPU; once the period's quota is spent, the clock jumps to the next period."""

    def __init__(self, quota: float, period: float, phase: float, used: float) -> None:
        self.quota, self.period = quota, period
        self.wall, self.cpu = phase, 0.0
        self.used = used  # of this period's quota, before the spin starts
        self.step = 2e-5

    def wall_clock(self) -> float:
        if self.used >= self.quota * self.period:
            self.wall = (self.wall // self.period + 1) * self.period
            self.used = 0.0
        self.wall += self.step
        self.cpu += self.step
        self.used += self.step
        if self.wall % self.period < self.step:  # crossed a boundary while running
            self.used = self.wall % self.period
        return self.wall

    def cpu_clock(self) -> float:
        return self.cpu


@pytest.mark.parametrize("quota", [0.2, 0.3, 0.4, 0.6])
@pytest.mark.parametrize(("phase", "used"), [(0.0, 0.0), (0.03, 0.0), (0.07, 1.0), (0.099, 0.0)])
def test_the_share_is_the_quota_whatever_the_period_the_spin_starts_in(
    quota: float, phase: float, used: float
) -> None:
    # used=1.0: a profiler spent the period's quota just before the spin (the case that
    # measured a 0.6-core peer at 0.54); used=0.0: a quiet peer with all of it left.
    cfs = FakeCFS(quota, 0.1, phase, min(used, quota) * 0.1)
    share = measured_cpu_share(0.35, cfs.wall_clock, cfs.cpu_clock)
    assert share == pytest.approx(quota, rel=0.01)


def test_without_throttles_the_share_is_the_whole_spin() -> None:
    assert share_between_throttles([], (0.0, 0.0), (0.4, 0.4)) == 1.0
    assert share_between_throttles([(0.1, 0.05)], (0.0, 0.0), (0.4, 0.2)) == 0.5
    assert share_between_throttles([], (0.0, 0.0), (0.0, 0.0)) == 1.0


def test_the_whole_spin_ratio_is_off_by_what_the_first_period_had_left() -> None:
    # Why the spin measures between throttles: over the whole 0.35 s, a 0.2-core quota
    # found fresh 30 ms before a period ends reads 0.29 (the old measurement).
    cfs = FakeCFS(0.2, 0.1, 0.07, 0.0)
    w0 = cfs.wall_clock()
    while cfs.wall_clock() - w0 < 0.35:
        pass
    assert cfs.cpu / (cfs.wall - w0) > 0.28
    cfs = FakeCFS(0.2, 0.1, 0.07, 0.0)
    assert measured_cpu_share(0.35, cfs.wall_clock, cfs.cpu_clock) == pytest.approx(0.2, rel=0.01)


def test_limits_are_visible_where_a_quota_file_can_be_read(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:cpu,cpuacct:/peer\n")
    sys = tmp_path / "sys"
    _v1(sys / "cpu,cpuacct", -1)
    _v1(sys / "cpu,cpuacct" / "peer", -1)
    assert cpu_limits_visible(proc, sys, mountinfo=None)  # v1, no quota: visible
    proc.write_text("0::/user.slice/peer\n")
    _cgroup(sys / "user.slice" / "peer")  # v2 without the cpu controller: no cpu.max
    assert not cpu_limits_visible(proc, sys, mountinfo=None)
    (sys / "user.slice" / "cpu.max").write_text("max 100000\n")
    _cgroup(sys)
    assert cpu_limits_visible(proc, sys, mountinfo=None)  # a parent's says "max"
    assert not cpu_limits_visible(tmp_path / "missing", sys, mountinfo=None)


def test_a_spin_is_asked_only_where_no_limit_can_be_read() -> None:
    def no_spin() -> float:
        raise AssertionError("spun where the cgroup files said what the limit is")

    assert effective_quota(1, lambda: 0.4, lambda: True, no_spin) == 0.4
    # Files visible, no quota: a machine busy at start-up is not taken for a quota.
    assert effective_quota(1, lambda: None, lambda: True, no_spin) is None
    # Hidden files: the spin's share, for each thread; near a whole core, no limit.
    assert effective_quota(2, lambda: None, lambda: False, lambda: 0.5) == 1.0
    assert effective_quota(1, lambda: None, lambda: False, lambda: 0.9) is None

"""cgroup CPU quota detection on fake /proc and /sys trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci_p2p.hostinfo import cpu_quota_cores, measured_cpu_share, share_between_throttles


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/x\n4:cpu,cpuacct:/edgeci-bench/peer2\n")
    d = tmp_path / "sys" / "cpu,cpuacct" / "edgeci-bench" / "peer2"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("30000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota_cores(proc, tmp_path / "sys") == 0.3
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota_cores(proc, tmp_path / "sys") is None


def test_cgroup_v2_quota_and_none(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/peer\n")
    d = tmp_path / "sys" / "user.slice" / "peer"
    d.mkdir(parents=True)
    (d / "cpu.max").write_text("60000 100000\n")
    assert cpu_quota_cores(proc, tmp_path / "sys") == 0.6
    (d / "cpu.max").write_text("max 100000\n")
    assert cpu_quota_cores(proc, tmp_path / "sys") is None
    assert cpu_quota_cores(tmp_path / "missing", tmp_path / "sys") is None


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

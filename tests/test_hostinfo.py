"""cgroup CPU quota detection on fake /proc and /sys trees."""

from __future__ import annotations

from pathlib import Path

from edgeci_p2p.hostinfo import cpu_quota_cores


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
    from edgeci_p2p.hostinfo import measured_cpu_share

    share = measured_cpu_share(0.05)
    assert 0.0 < share <= 1.0

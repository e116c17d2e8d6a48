"""The emulation's pure parts: layouts (headroom, homogeneous), CFS periods, the cgroup
v1/v2 files it writes and how it finds them, the wrapper a peer starts through."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from emulation import (
    CGROUP_V1,
    CGROUP_V2,
    CgroupFS,
    Emulation,
    default_layout,
    detect_cgroup,
    headroom_shares,
    homogeneous_cpus,
    make_layout,
    packed_cpus,
    v2_weight,
)

from edgeci_p2p.planners.testbeds import load_testbed

ISSUE = [0.6, 0.4, 0.3, 0.2]


def test_headroom_keeps_the_ratios_within_half_the_machine() -> None:
    two = headroom_shares(ISSUE, 2)
    assert two == [0.4, 0.2667, 0.2, 0.1333]
    assert sum(two) == pytest.approx(1.0, abs=1e-9)
    assert sum(two) / max(two) == pytest.approx(2.5, abs=1e-9)  # the ideal is unchanged
    for s, t in zip(ISSUE, two, strict=True):
        assert t / two[0] == pytest.approx(s / ISSUE[0], rel=1e-3)
    assert sum(headroom_shares(ISSUE, 1)) == pytest.approx(0.5, abs=1e-3)
    # Where the shares already fit in half the machine they stay as they are.
    assert headroom_shares(ISSUE, 3) == ISSUE
    assert headroom_shares(ISSUE, 16) == ISSUE
    with pytest.raises(ValueError):
        headroom_shares([0.5, 0.0], 2)


def test_headroom_is_the_default_below_eight_cores() -> None:
    assert default_layout(2) == default_layout(7) == "headroom"
    assert default_layout(8) == default_layout(64) == "testbed"


def test_the_headroom_testbed_describes_the_headroom_layout() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from cluster import testbed_shares

    base, head = load_testbed("emulated-4"), load_testbed("emulated-4-headroom")
    base_shares, head_shares = testbed_shares(base), testbed_shares(head)
    assert base_shares == ISSUE
    assert head_shares == headroom_shares(ISSUE, 2)
    assert head.links == base.links and head.auctioneer == base.auctioneer
    for d0, d1, s0, s1 in zip(base.devices, head.devices, base_shares, head_shares, strict=True):
        for kind in ("conv", "pool", "block", "head"):
            m0, m1 = d0.compute.fits[kind], d1.compute.fits[kind]
            # A device at a smaller share takes proportionally longer: a and b scale by
            # the old share over the new one (x1.5, up to the names' rounding).
            assert m1.a == pytest.approx(m0.a * s0 / s1, rel=1e-9)
            assert m1.b == pytest.approx(m0.b * s0 / s1, rel=1e-9)


def test_homogeneous_peers_get_distinct_cores_and_one_is_left_free() -> None:
    assert homogeneous_cpus(4, range(16)) == [1, 2, 3, 4]
    assert homogeneous_cpus(1, [0, 1]) == [1]
    assert homogeneous_cpus(2, [2, 5, 7]) == [5, 7]  # a restricted affinity
    with pytest.raises(ValueError, match=r"needs 5 cores.*offers 2.*at most --homogeneous 1"):
        homogeneous_cpus(4, [0, 1])
    with pytest.raises(ValueError, match="at least 1"):
        homogeneous_cpus(0, range(4))


def test_packed_capped_peers_balance_the_cores_quotas() -> None:
    shares = headroom_shares(ISSUE, 2)
    cpus = packed_cpus(shares, [0, 1])
    assert cpus == [0, 1, 1, 0]  # 0.4 + 0.1333 and 0.2667 + 0.2
    for core in (0, 1):
        assert sum(s for s, c in zip(shares, cpus, strict=True) if c == core) <= 0.54
    assert packed_cpus([0.5, 0.5, 0.5], [2, 3]) == [2, 3, 2]  # ties go to the lower core
    assert packed_cpus(ISSUE, range(4)) == [0, 1, 2, 3]  # one each when there are cores
    with pytest.raises(ValueError, match="overloads"):
        packed_cpus(ISSUE, [0])  # 1.5 cores of quota on one core
    with pytest.raises(ValueError, match="no cores"):
        packed_cpus(ISSUE, [])
    lay = make_layout(shares, None, cpus=cpus, cgroup=CGROUP_V1)
    assert [p.cpu for p in lay.peers] == cpus


def test_periods_and_quotas_the_kernel_accepts() -> None:
    lay = make_layout(headroom_shares(ISSUE, 2), None, period_us=10_000, cgroup=CGROUP_V1)
    assert lay.period_us == 10_000
    assert [round(p.share * lay.period_us) for p in lay.peers if p.share] == [
        4000,
        2667,
        2000,
        1333,
    ]
    with pytest.raises(ValueError, match="minimum"):
        make_layout([0.05], None, period_us=10_000, cgroup=CGROUP_V1)  # 500 us < 1 ms
    with pytest.raises(ValueError, match="period"):
        make_layout([0.5], None, period_us=500, cgroup=CGROUP_V1)
    with pytest.raises(ValueError, match="same core"):
        make_layout([None, None], None, cpus=[1, 1], cgroup=CGROUP_V1)
    with pytest.raises(ValueError, match="same core"):
        make_layout([0.6, 0.5], None, cpus=[1, 1], cgroup=CGROUP_V1)  # 1.1 cores on one
    with pytest.raises(ValueError, match="same core"):
        make_layout([0.2, None], None, cpus=[1, 1], cgroup=CGROUP_V1)
    with pytest.raises(ValueError, match="pinned cores"):
        make_layout([None, None], None, cpus=[1], cgroup=CGROUP_V1)


def test_the_cgroup_files_of_each_version() -> None:
    assert CGROUP_V1.quota_files(0.4, 10_000) == [
        ("cpu.cfs_period_us", "10000\n"),  # the period first: a quota is checked against it
        ("cpu.cfs_quota_us", "4000\n"),
    ]
    assert CGROUP_V2.quota_files(0.1333, 20_000) == [("cpu.max", "2666 20000\n")]
    assert CGROUP_V1.weight_file(8192) == ("cpu.shares", "8192\n")
    assert CGROUP_V2.weight_file(8192) == ("cpu.weight", "800\n")
    assert (CGROUP_V1.join_file, CGROUP_V2.join_file) == ("tasks", "cgroup.procs")
    assert [v2_weight(s) for s in (2, 1024, 8192, 262144)] == [1, 100, 800, 10000]


def test_a_peer_joins_its_cgroup_then_its_core_then_its_namespace() -> None:
    lay = make_layout([0.4, None], 100.0, cpus=[None, 3], cgroup=CGROUP_V2)
    emu = Emulation(lay, host=None)  # type: ignore[arg-type]  # command() needs no host
    capped, pinned = lay.peers
    assert emu.command(capped, ["peer", "--x"]) == [
        "sh", "-c", 'echo $$ > /sys/fs/cgroup/edgeci-bench-0/cgroup.procs && exec "$@"', "sh",
        "nsenter", "--net=/var/run/netns/edgeci-bench-0", "--", "peer", "--x",
    ]  # fmt: skip
    assert emu.command(pinned, ["peer"]) == [
        "taskset", "-c", "3", "nsenter", "--net=/var/run/netns/edgeci-bench-1", "--", "peer",
    ]  # fmt: skip
    loop = make_layout([None], None, netns=False, cgroup=CGROUP_V1)
    assert Emulation(loop, host=None).command(loop.peers[0], ["peer"]) == ["peer"]  # type: ignore[arg-type]


def _fake_roots(tmp_path: Path, v1: bool, v2_controllers: str | None) -> tuple[str, str]:
    v1_root, v2_root = tmp_path / "cpu", tmp_path / "unified"
    if v1:
        v1_root.mkdir()
        (v1_root / "cpu.cfs_quota_us").write_text("-1\n")
    if v2_controllers is not None:
        v2_root.mkdir()
        (v2_root / "cgroup.controllers").write_text(v2_controllers + "\n")
    return str(v1_root), str(v2_root)


@pytest.mark.parametrize(
    ("v1", "v2", "want", "found"),
    [
        (True, None, "auto", 1),
        (True, "", "auto", 1),  # this machine: v1 cpu, an empty v2 beside it
        (False, "cpuset cpu io memory pids", "auto", 2),  # current distributions
        (True, "cpuset cpu io", "auto", 1),
        (True, "cpuset cpu io", "v2", 2),
        (True, "", "v2", None),
        (False, "io memory", "auto", None),
        (False, None, "v1", None),
    ],
)
def test_detect_cgroup(
    tmp_path: Path, v1: bool, v2: str | None, want: str, found: int | None
) -> None:
    v1_root, v2_root = _fake_roots(tmp_path, v1, v2)
    fs, why = detect_cgroup(want, v1_root, v2_root)
    if found is None:
        assert fs is None and "no cgroup" in why
    else:
        assert fs == CgroupFS(found, v1_root if found == 1 else v2_root)

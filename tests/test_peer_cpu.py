"""benchmarks/peer_cpu.py: a peer's CPU by thread kind, from a /proc tree written here."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import astuple
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from peer_cpu import PeerCPU, charge, cpu_table, read_peer, where_the_cpu_went


def _stat(pid: int, comm: str, ppid: int, utime: int, stime: int) -> str:
    # Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    return f"{pid} ({comm}) S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0\n"


def _proc(root: Path, threads: dict[int, tuple[str, int]], children: dict[int, int]) -> None:
    """Peer 100 with ``threads`` (tid -> (comm, ticks)), and processes ``children``
    (pid -> ticks) whose parent is 100; one unrelated process besides."""
    for tid, (comm, ticks) in threads.items():
        d = root / "100" / "task" / str(tid)
        d.mkdir(parents=True)
        (d / "stat").write_text(_stat(tid, comm, 1, ticks, 0))
    (root / "100" / "stat").write_text(_stat(100, "python", 1, 0, 0))
    for pid, ticks in children.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "stat").write_text(_stat(pid, "python (aside)", 100, ticks - 1, 1))
    (root / "999").mkdir()
    (root / "999" / "stat").write_text(_stat(999, "other", 1, 500, 0))
    (root / "self").mkdir()


def test_threads_are_told_apart_by_name_and_children_count(tmp_path: Path) -> None:
    _proc(
        tmp_path,
        {100: ("python", 30), 101: ("edgeci-tile", 70), 102: ("asyncio_0", 5)},
        {200: 8},
    )
    got = read_peer(100, tmp_path, tick=0.01)
    assert astuple(got) == pytest.approx((0.30, 0.70, 0.05, 0.08))  # loop, compute, other, children


def test_a_gone_peer_reads_as_zero(tmp_path: Path) -> None:
    assert read_peer(4242, tmp_path, tick=0.01) == PeerCPU()


def test_charge_is_per_request_and_never_negative() -> None:
    before = [PeerCPU(loop=0.1, compute=0.2, children=0.5)]
    after = [PeerCPU(loop=0.14, compute=0.3, children=0.0)]  # the child ended meanwhile
    (peer,) = charge(before, after, requests=2)
    assert peer == pytest.approx({"loop": 20.0, "compute": 50.0, "other": 0.0, "children": 0.0})


def test_where_the_cpu_went_averages_each_group_and_gives_the_loop_share() -> None:
    def rec(strategy: str, loop: float, compute: float) -> dict[str, object]:
        cpu = [{"loop": loop, "compute": compute, "other": 0.0, "children": 0.0}]
        return {"model": "vgg16", "strategy": strategy, "cpu": cpu}

    results = [rec("edgeci", 10, 30), rec("edgeci", 30, 50), rec("local", 1, 99)]
    results.append({"model": "vgg16", "strategy": "edgeci"})  # a first request: no charge
    where = where_the_cpu_went(results, lambda r: (r["model"], r["strategy"]))
    assert where["vgg16"]["edgeci"] == [
        {"loop": 20.0, "compute": 40.0, "other": 0.0, "children": 0.0, "loop_share": 0.33}
    ]
    assert where["vgg16"]["local"][0]["loop_share"] == 0.01
    assert "peer0 20+40+0 (33%)" in cpu_table(where)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc thread names")
def test_the_daemons_worker_thread_carries_its_name_in_the_os() -> None:
    from edgeci_p2p.aio.timed import WORKER_NAME, worker_pool

    def comm() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    with worker_pool() as pool:
        assert pool.submit(comm).result() == WORKER_NAME


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness")
def test_a_niced_worker_lowers_its_own_thread_only() -> None:
    from edgeci_p2p.aio.timed import worker_pool

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    here = nice()
    with worker_pool(min(here + 7, 19)) as pool:
        assert pool.submit(nice).result() == min(here + 7, 19)
    with worker_pool() as pool:
        assert pool.submit(nice).result() == here
    assert nice() == here  # the event loop's thread keeps its place


def test_the_bare_clusters_table_sums_its_peers() -> None:
    from loop_cpu import table

    per_peer = [
        {"loop": 10.0, "compute": 100.0, "other": 1.0, "children": 0.0},
        {"loop": 5.5, "compute": 50.0, "other": 0.0, "children": 2.0},
    ]
    lines = table({"edgeci-halo": {"mean_ms": 300.0, "cpu_ms": per_peer}}).splitlines()
    assert lines[0].split()[2:] == ["loop", "compute", "other", "children"]
    assert [float(x) for x in lines[-1].split()[2:6]] == [15.5, 150.0, 1.0, 2.0]
    assert len(lines) == 4  # a heading, a row per peer, the sum


def test_the_peer_flags_refuse_a_niceness_or_patience_out_of_range() -> None:
    from edgeci_p2p.peer_cli import build_parser, config_from_args

    parse = build_parser().parse_args
    config = config_from_args(parse(["--worker-nice", "10", "--plan-patience", "2"]))
    assert config.worker_nice == 10 and config.plan_patience_s == 2.0
    for bad, what in (
        (["--worker-nice", "-5"], "--worker-nice"),
        (["--worker-nice", "20"], "--worker-nice"),
        (["--plan-patience", "-1"], "--plan-patience"),
    ):
        with pytest.raises(ValueError, match=what):
            config_from_args(parse(bad))

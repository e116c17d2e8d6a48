"""benchmarks/free_loops.py: the diagnostic that moves the helpers' event loops out of
their quotas, each once its compute worker exists (a /proc tree and a host in memory)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from emulation import CgroupFS
from free_loops import FreeLoops, FreePlanner, planning_children, ready_loops

from edgeci_p2p.aio.timed import WORKER_NAME


class Recorder:
    """The two side effects FreeLoops has, recorded."""

    def __init__(self) -> None:
        self.dirs: list[str] = []
        self.writes: list[tuple[str, str]] = []

    def mkdir(self, path: str) -> None:
        self.dirs.append(path)

    def write(self, path: str, text: str) -> None:
        self.writes.append((path, text))


def _thread(proc: Path, pid: int, tid: int, comm: str) -> None:
    d = proc / str(pid) / "task" / str(tid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")


def test_a_loop_moves_only_once_its_worker_exists(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _thread(proc, 10, 10, "python")
    _thread(proc, 10, 11, WORKER_NAME)
    _thread(proc, 20, 20, "python")  # its worker not made yet: would follow the loop
    assert ready_loops([10, 20, 30], proc) == [10]  # 30: gone
    host = Recorder()
    free = FreeLoops(host, CgroupFS(1, "/cg"), "edgeci-bench", [10, 20], 8192, proc)  # type: ignore[arg-type]
    # Named with the emulation's prefix, so that its teardown removes it with the rest.
    assert host.dirs == ["/cg/edgeci-bench-free-loops"]
    assert host.writes == [("/cg/edgeci-bench-free-loops/cpu.shares", "8192\n")]
    assert free.step() == [10]
    assert host.writes[-1] == ("/cg/edgeci-bench-free-loops/tasks", "10\n")  # the main thread
    assert free.step() == [] and free.waiting == [20]
    _thread(proc, 20, 21, WORKER_NAME)
    assert free.step() == [20] and free.moved == [10, 20] and not free.waiting


def test_cgroup_v2_is_refused() -> None:
    with pytest.raises(ValueError, match="cgroup v1"):
        FreeLoops(Recorder(), CgroupFS(2, "/cg2"), "edgeci-bench", [10], 8192)  # type: ignore[arg-type]


def _process(proc: Path, pid: int, ppid: int, comm: str, argv: list[str]) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_the_entry_peers_planning_child_moves_a_replacement_too(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    child = ["python", "-m", "edgeci_p2p.auction.aside"]
    _process(proc, 10, 1, "edgeci-peer", ["python", "edgeci-peer"])
    _process(proc, 11, 10, "python (a)", child)  # a comm with a space and a parenthesis
    _process(proc, 21, 20, "python", child)  # another peer's child: not ours
    _process(proc, 12, 10, "sh", ["sh", "-c", "true"])  # a child, not the planner
    (proc / "self").mkdir()
    assert planning_children([10], proc) == [11]
    host = Recorder()
    free = FreePlanner(host, CgroupFS(2, "/cg2"), "edgeci-bench", [10], 1024, proc)  # type: ignore[arg-type]
    assert host.dirs == ["/cg2/edgeci-bench-free-planner"]
    assert free.step() == [11] and free.step() == []
    assert host.writes[-1] == ("/cg2/edgeci-bench-free-planner/cgroup.procs", "11\n")
    _process(proc, 13, 10, "python", child)  # the first died; its replacement
    assert free.step() == [13] and free.moved == [11, 13]

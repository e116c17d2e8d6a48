"""A diagnostic for ``benchmarks/cluster.py --free-helper-loops``: the helpers' event
loops taken out of their CPU quotas, their compute left in.

On the emulated cluster each capped helper's event loop (messages in and out, TLS, the
strip job's bookkeeping) takes 14-42% of its quota, and the plans are balanced for
that: the auctioneer gets 47-50% of the compute for 40% of the quotas
(``benchmarks/plan_ceiling.py``, docs/cluster-benchmark.md, twenty-fifth session). This
measures what the cluster would do if those loops cost the helpers nothing: each
helper's main thread (its event loop; the thread whose id is the process id) moves to a
cgroup of its own with no quota, once the peer's compute worker thread exists (threads
inherit the cgroup of the thread that makes them: the worker, made before, stays under
the quota). cgroup v1 only (v2 moves threads only in threaded subtrees). It changes what
is measured: the figures it gives are a bound, never the cluster's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from emulation import CgroupFS, Host

from edgeci_p2p.aio.timed import WORKER_NAME

POLL_S = 0.05
"""How often the helpers are looked at until every loop has moved."""


def ready_loops(pids: Sequence[int], proc: Path = Path("/proc")) -> list[int]:
    """The processes among ``pids`` whose compute worker thread exists (their main
    thread may move without taking the worker along)."""
    out = []
    for pid in pids:
        try:
            tids = [t.name for t in (proc / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            try:
                comm = (proc / str(pid) / "task" / tid / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith(WORKER_NAME):
                out.append(pid)
                break
    return out


class _Mover:
    """Moves processes or threads into ``<root>/<prefix>-<name>`` (no quota, weight
    ``cpu_shares``) from a thread of its own, every ``poll_s``, while :meth:`more`; the
    emulation's teardown removes the cgroup with its others (its name has the
    emulation's prefix)."""

    poll_s = POLL_S

    def __init__(
        self, host: Host, cgroup: CgroupFS, prefix: str, name: str, cpu_shares: int
    ) -> None:
        self.host = host
        self.path = f"{cgroup.root}/{prefix}-{name}"
        self.moved: list[int] = []
        host.mkdir(self.path)
        weight, text = cgroup.weight_file(cpu_shares)
        host.write(f"{self.path}/{weight}", text)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def step(self) -> list[int]:
        raise NotImplementedError

    def more(self) -> bool:
        """Whether anything may still move."""
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while self.more() and not self._stop.wait(self.poll_s):
            self.step()


class FreeLoops(_Mover):
    """Moves the main threads of ``pids`` into ``<root>/<prefix>-free-loops`` as their
    workers appear."""

    def __init__(
        self,
        host: Host,
        cgroup: CgroupFS,
        prefix: str,
        pids: Sequence[int],
        cpu_shares: int,
        proc: Path = Path("/proc"),
    ) -> None:
        if cgroup.version != 1:
            raise ValueError(
                f"--free-helper-loops needs cgroup v1 (per-thread moves), not {cgroup}"
            )
        super().__init__(host, cgroup, prefix, "free-loops", cpu_shares)
        self.proc = proc
        self.join = f"{self.path}/{cgroup.join_file}"
        self.waiting = list(pids)

    def step(self) -> list[int]:
        """Move the loops whose workers now exist; returns the pids moved."""
        now = ready_loops(self.waiting, self.proc)
        for pid in now:
            # v1 ``tasks`` takes a thread id: the main thread's is the process id.
            self.host.write(self.join, f"{pid}\n")
            self.waiting.remove(pid)
            self.moved.append(pid)
        return now

    def more(self) -> bool:
        return bool(self.waiting)


# ---- the auctioneer's planning child -------------------------------------------------

PLANNER_MODULE = "edgeci_p2p.auction.aside"
"""The planning child's module (``aio/aside.py`` starts it with ``-m``)."""


def planning_children(parents: Sequence[int], proc: Path = Path("/proc")) -> list[int]:
    """The planning children (``python -m edgeci_p2p.auction.aside``) of ``parents``."""
    want = {str(p) for p in parents}
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # stat: "pid (comm) state ppid ...": the comm may hold spaces, so after its ")".
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid in want and PLANNER_MODULE.encode() in cmdline:
            out.append(int(d.name))
    return sorted(out)


class FreePlanner(_Mover):
    """Moves the planning children of ``pids`` (whole processes) into
    ``<root>/<prefix>-free-planner`` as they appear, a child that replaced a dead one
    included."""

    poll_s = POLL_S * 10

    def __init__(
        self,
        host: Host,
        cgroup: CgroupFS,
        prefix: str,
        pids: Sequence[int],
        cpu_shares: int,
        proc: Path = Path("/proc"),
    ) -> None:
        super().__init__(host, cgroup, prefix, "free-planner", cpu_shares)
        self.proc, self.pids = proc, list(pids)
        self.join = f"{self.path}/cgroup.procs"

    def step(self) -> list[int]:
        """Move the planning children not moved yet; returns their pids."""
        new = [c for c in planning_children(self.pids, self.proc) if c not in self.moved]
        for pid in new:
            self.host.write(self.join, f"{pid}\n")
            self.moved.append(pid)
        return new

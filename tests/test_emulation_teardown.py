"""The emulated cluster's setup and teardown against a fake host (no root needed).

The fake keeps the state a real machine would (namespaces and the processes in
them, qdiscs, cgroup directories and their tasks, live processes) and can raise
KeyboardInterrupt at any chosen side effect, so the tests interrupt a run at
every step and check that nothing of the cluster remains.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from emulation import (
    CGROUP_CPU,
    CGROUP_V1,
    CGROUP_V2,
    CGROUP_V2_ROOT,
    NETNS_DIR,
    CgroupFS,
    CommandError,
    Emulation,
    Layout,
    Terminated,
)
from emulation import make_layout as _make_layout

SHARES = [0.6, 0.4, 0.3, 0.2]
CGROUPS = [CGROUP_V1, CGROUP_V2]


def make_layout(*args: object, cgroup: CgroupFS = CGROUP_V1, **kw: object) -> Layout:
    """The emulation's layout, on cgroup v1 unless told (never what this machine has)."""
    return _make_layout(*args, cgroup=cgroup, **kw)  # type: ignore[arg-type]


class FakeHost:
    """A machine in memory. ``interrupt_at``: the n-th side effect raises KeyboardInterrupt
    (once), as a Ctrl-C arriving at that moment would."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.commands: list[list[str]] = []
        self.namespaces: dict[str, set[int]] = {"someone-else": set()}
        self.qdiscs: dict[str, list[str]] = {}
        self.cgroups: dict[str, set[int]] = {
            f"{CGROUP_CPU}/other-group": set(),
            f"{CGROUP_V2_ROOT}/other-group": set(),
        }
        self.files: dict[str, str] = {f"{CGROUP_V2_ROOT}/cgroup.subtree_control": "memory pids\n"}
        self.pinned: dict[int, int] = {}
        """pid -> the core taskset pinned it to."""
        self.procs: dict[int, bool] = {}
        """pid -> ignores SIGTERM."""
        self.unkillable: set[int] = set()
        self.next_pid = 1000
        self.effects = 0
        self.interrupt_at = interrupt_at
        self.clock = 0.0

    def _effect(self, what: list[str]) -> None:
        self.commands.append(what)
        self.effects += 1
        if self.interrupt_at is not None and self.effects == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt

    def _need_ns(self, argv: Sequence[str], ns: str) -> None:
        if ns not in self.namespaces:
            raise CommandError(argv, 1, f'Cannot open network namespace "{ns}"')

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        a = list(argv)
        self._effect(a)
        try:
            return self._run(a)
        except CommandError:
            if check:
                raise
            return ""

    def _run(self, a: list[str]) -> str:
        if a[:3] == ["ip", "netns", "add"]:
            if a[3] in self.namespaces:
                raise CommandError(a, 1, "File exists")
            self.namespaces[a[3]] = set()
        elif a[:3] == ["ip", "netns", "del"]:
            self._need_ns(a, a[3])
            del self.namespaces[a[3]]
            self.qdiscs.pop(a[3], None)  # the namespace's links and qdiscs go with it
        elif a[:3] == ["ip", "netns", "list"]:
            return "".join(f"{n} (id: {i})\n" for i, n in enumerate(self.namespaces))
        elif a[:3] == ["ip", "netns", "pids"]:
            self._need_ns(a, a[3])
            return "".join(f"{p}\n" for p in sorted(self.namespaces[a[3]]))
        elif a[:4] == ["ip", "-o", "link", "show"]:
            return "1: lo: <LOOPBACK,UP> mtu 65536\n2: eth0: <BROADCAST> mtu 1500\n"
        elif a[:3] == ["tc", "qdisc", "show"]:
            return "qdisc noqueue 0: dev lo root refcnt 2\n"
        elif a[:2] == ["tc", "-n"] and a[3:5] == ["qdisc", "add"]:
            self._need_ns(a, a[2])
            self.qdiscs.setdefault(a[2], []).append(a[a.index("dev") + 1])
        elif a[:2] == ["ip", "-n"]:
            self._need_ns(a, a[2])
        elif a[:3] == ["ip", "link", "add"]:
            for i, w in enumerate(a):
                if w == "netns":
                    self._need_ns(a, a[i + 1])
        elif a[:2] == ["tc", "-V"]:
            return "tc utility, iproute2-fake\n"
        else:
            raise AssertionError(f"the fake does not know {a}")
        return ""

    def write(self, path: str, text: str) -> None:
        self._effect(["write", path, text])
        d, name = os.path.split(path)
        if path == f"{CGROUP_V2_ROOT}/cgroup.subtree_control":
            assert text.strip() == "+cpu", text
            self.files[path] += " cpu"
            return
        if d not in self.cgroups:
            raise FileNotFoundError(path)
        v2 = os.path.dirname(d) == CGROUP_V2_ROOT
        v2_cpu = "cpu" in self.files[f"{CGROUP_V2_ROOT}/cgroup.subtree_control"].split()
        if v2 and name.startswith("cpu.") and not v2_cpu:
            raise FileNotFoundError(path)  # no cpu.* files until the parent enables cpu
        if name.startswith("cpu.cfs") or name == "cpu.shares":
            assert not v2, f"a v1 file in a v2 cgroup: {path}"
        if name in ("cpu.max", "cpu.weight"):
            assert v2, f"a v2 file in a v1 cgroup: {path}"
        if name in ("cgroup.procs", "tasks"):  # moves a running process in
            pid = int(text)
            assert pid in self.procs, f"no process {pid}"
            for members in self.cgroups.values():
                members.discard(pid)
            self.cgroups[d].add(pid)
            return
        self.files[path] = text

    def mkdir(self, path: str) -> None:
        self._effect(["mkdir", path])
        if path in self.cgroups:
            raise FileExistsError(path)
        self.cgroups[path] = set()

    def rmdir(self, path: str) -> None:
        self._effect(["rmdir", path])
        if path not in self.cgroups:
            raise FileNotFoundError(path)
        if self.cgroups[path]:
            raise OSError(16, "Device or resource busy", path)
        del self.cgroups[path]

    def listdir(self, path: str) -> list[str]:
        assert path in (CGROUP_CPU, CGROUP_V2_ROOT)
        files = ["cpu.shares", "tasks"] if path == CGROUP_CPU else ["cgroup.procs", "cpu.stat"]
        subdirs = [os.path.basename(c) for c in self.cgroups if os.path.dirname(c) == path]
        return sorted(files + subdirs)

    def read(self, path: str) -> str:
        if path in self.files:
            return self.files[path]
        cg, name = os.path.split(path)
        if name == "cpu.stat":
            return (
                "nr_periods 10\nnr_throttled 4\nthrottled_time 123\n" if cg in self.cgroups else ""
            )
        assert name == "cgroup.procs"
        return "".join(f"{p}\n" for p in sorted(self.cgroups.get(cg, set())))

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: str) -> int:
        a = list(argv)
        self._effect(["spawn", *a])
        pid = self.next_pid
        self.next_pid += 1
        if a[0] == "sh":  # the cgroup wrapper: echo $$ > <cgroup>/<join file> && exec ...
            cg, join = a[2].split(">")[1].split("&&")[0].strip().rsplit("/", 1)
            if cg not in self.cgroups:
                raise AssertionError(f"spawned into missing cgroup {cg}")
            assert join == ("cgroup.procs" if os.path.dirname(cg) == CGROUP_V2_ROOT else "tasks")
            self.cgroups[cg].add(pid)
            a = a[4:]
        if a[0] == "taskset":
            assert a[1] == "-c"
            self.pinned[pid] = int(a[2])
            a = a[3:]
        if a[0] == "nsenter":
            ns = a[1].removeprefix(f"--net={NETNS_DIR}/")
            assert a[2] == "--"
            if ns not in self.namespaces:
                raise AssertionError(f"spawned into missing namespace {ns}")
            self.namespaces[ns].add(pid)
        self.procs[pid] = False
        return pid

    def start_stray(self, ns: str, ignores_term: bool = True) -> int:
        """A process we did not spawn through the emulation (e.g. a measuring client)."""
        pid = self.next_pid
        self.next_pid += 1
        self.namespaces[ns].add(pid)
        self.procs[pid] = ignores_term
        return pid

    def kill(self, pid: int, sig: int, group: bool = False) -> bool:
        self._effect(["kill", str(pid), str(sig)])
        if pid not in self.procs:
            return False
        if pid in self.unkillable or (sig == signal.SIGTERM and self.procs[pid]):
            return True
        del self.procs[pid]
        for members in [*self.namespaces.values(), *self.cgroups.values()]:
            members.discard(pid)
        return True

    def alive(self, pid: int) -> bool:
        return pid in self.procs

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    # ---- what a test checks -------------------------------------------------------------

    def ours(self) -> list[str]:
        left = [n for n in self.namespaces if n.startswith("edgeci-bench")]
        left += [c for c in self.cgroups if "edgeci-bench" in c]
        left += [f"qdisc {ns}" for ns in self.qdiscs if ns.startswith("edgeci-bench")]
        left += [f"pid {p}" for p in self.procs]
        return left


def run_benchmark(
    host: FakeHost, shares: Sequence[float | None] = SHARES, cgroup: CgroupFS = CGROUP_V1
) -> Emulation:
    emu = Emulation(make_layout(shares, 100.0, cgroup=cgroup), host)
    with emu.running():
        for slot in emu.layout.peers:
            emu.spawn(slot, ["edgeci-peer", "--host", slot.address], {}, "/dev/null")
    return emu


@pytest.mark.parametrize("cgroup", CGROUPS, ids=str)
def test_a_full_run_builds_the_cluster_and_leaves_nothing(cgroup: CgroupFS) -> None:
    host = FakeHost()
    emu = Emulation(make_layout(SHARES, 100.0, cpu_weight=8192, cgroup=cgroup), host)
    with emu.running():
        for slot in emu.layout.peers:
            emu.spawn(slot, ["edgeci-peer"], {}, "/dev/null")
        # While running: one namespace per peer plus the switch, every link shaped at
        # both ends, every peer in its own cgroup at its share.
        assert sorted(n for n in host.namespaces if n.startswith("edgeci-bench")) == sorted(
            emu.layout.namespaces
        )
        shaped = sum(len(devs) for devs in host.qdiscs.values())
        assert shaped == 2 * len(SHARES)
        for slot in emu.layout.peers:
            assert slot.cgroup is not None and slot.share is not None
            assert slot.cgroup.startswith(cgroup.root + "/")
            assert host.cgroups[slot.cgroup] & set(emu.pids)
            period = emu.layout.period_us
            if cgroup.version == 1:
                assert host.files[f"{slot.cgroup}/cpu.cfs_period_us"] == f"{period}\n"
                quota = int(host.files[f"{slot.cgroup}/cpu.cfs_quota_us"])
                assert host.files[f"{slot.cgroup}/cpu.shares"] == "8192\n"
            else:
                q, p = host.files[f"{slot.cgroup}/cpu.max"].split()
                quota = int(q)
                assert int(p) == period
                assert host.files[f"{slot.cgroup}/cpu.weight"] == "800\n"
            assert quota == round(slot.share * period)
            assert host.namespaces[slot.namespace] & set(emu.pids)
    assert host.ours() == []
    assert not emu.leftovers()
    # Other people's namespaces and cgroups are never touched.
    assert "someone-else" in host.namespaces
    assert {f"{CGROUP_CPU}/other-group", f"{CGROUP_V2_ROOT}/other-group"} <= set(host.cgroups)
    # v2: the controller stays enabled in the root (see Emulation.setup).
    v2_control = host.files[f"{CGROUP_V2_ROOT}/cgroup.subtree_control"].split()
    assert ("cpu" in v2_control) == (cgroup.version == 2)


def _side_effects_of_a_full_run(cgroup: CgroupFS) -> int:
    host = FakeHost()
    run_benchmark(host, cgroup=cgroup)
    return host.effects


@pytest.mark.parametrize(
    ("cgroup", "step"),
    [(c, n) for c in CGROUPS for n in range(1, _side_effects_of_a_full_run(c) + 1)],
    ids=lambda v: str(v) if isinstance(v, int) else f"v{v.version}",
)
def test_an_interrupt_at_any_step_still_removes_everything(cgroup: CgroupFS, step: int) -> None:
    host = FakeHost(interrupt_at=step)
    # The interrupt always reaches the caller, even when it arrived during teardown.
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(host, cgroup=cgroup)
    assert host.ours() == [], f"interrupted at side effect {step}: {host.commands[step - 1]}"
    assert "someone-else" in host.namespaces


def test_stubborn_and_stray_processes_are_killed() -> None:
    host = FakeHost()
    emu = Emulation(make_layout(SHARES[:2], 100.0), host)
    with emu.running():
        pid = emu.spawn(emu.layout.peers[0], ["edgeci-peer"], {}, "/dev/null")
        host.procs[pid] = True  # ignores SIGTERM
        stray = host.start_stray(emu.layout.peers[1].namespace)
    assert not host.alive(pid) and not host.alive(stray)
    assert ["kill", str(pid), str(int(signal.SIGKILL))] in host.commands
    assert host.ours() == []


def test_teardown_is_idempotent_and_cleans_up_a_previous_crashed_run() -> None:
    host = FakeHost()
    crashed = Emulation(make_layout(SHARES, 100.0), host)
    crashed.setup()
    for slot in crashed.layout.peers:
        crashed.spawn(slot, ["edgeci-peer"], {}, "/dev/null")
    # A new run refuses to build over the remains and says how to remove them...
    fresh = Emulation(make_layout(SHARES, 100.0), host)
    with pytest.raises(RuntimeError, match="--cleanup"):
        fresh.setup()
    # ...and a teardown that knows nothing of the old pids still removes everything,
    # finding the processes through the namespaces and cgroups.
    assert not fresh.teardown()
    assert host.ours() == []
    assert not fresh.teardown()


def test_the_final_check_reports_what_could_not_be_removed() -> None:
    host = FakeHost()
    emu = Emulation(make_layout(SHARES[:2], 100.0), host)
    emu.setup()
    pid = emu.spawn(emu.layout.peers[1], ["edgeci-peer"], {}, "/dev/null")
    host.unkillable.add(pid)
    left = emu.teardown()
    assert left and left.processes == [pid]
    assert left.cgroups == [emu.layout.peers[1].cgroup]
    assert str(pid) in str(left)


def test_sigterm_during_a_run_tears_down_and_restores_the_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    host = FakeHost()
    emu = Emulation(make_layout(SHARES, 100.0), host)
    with pytest.raises(Terminated), emu.running():
        emu.spawn(emu.layout.peers[0], ["edgeci-peer"], {}, "/dev/null")
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # a point where the handler surely ran
        raise AssertionError("SIGTERM did not interrupt the run")
    assert host.ours() == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_unshaped_fallback_touches_no_network_state() -> None:
    host = FakeHost()
    emu = Emulation(make_layout([None, None, None], None, netns=False), host)
    with emu.running():
        for slot in emu.layout.peers:
            assert slot.address == "127.0.0.1" and slot.cgroup is None
            emu.spawn(slot, ["edgeci-peer"], {}, "/dev/null")
    writes = [c for c in host.commands if c[0] in ("mkdir", "write") or c[:2] == ["ip", "-n"]]
    adds = [c for c in host.commands if c[:3] in (["ip", "netns", "add"], ["ip", "link", "add"])]
    assert writes == [] and adds == []
    assert host.ours() == []
    with pytest.raises(ValueError, match="namespaces"):
        make_layout([None], 100.0, netns=False)


def test_the_report_measures_speedup_against_local_and_error_against_execution() -> None:
    from cluster import exec_seconds, summarise

    def rec(strategy: str, latency: float, predicted: float | None) -> dict[str, object]:
        # 0.1 s of auction before execution; the prediction is of execution only.
        return {
            "model": "vgg16",
            "strategy": strategy,
            "latency_s": latency,
            "total_s": latency - 0.01,
            "auction_s": 0.1,
            "bytes": 1000.0 if strategy != "local" else 0.0,
            "predicted_s": predicted,
        }

    results = [rec("local", t, 0.5) for t in (0.9, 1.0, 5.0)]
    results += [rec("edgeci", t, 0.3) for t in (0.4, 0.5, 0.6)]
    results += [rec("modnn", 2.0, None)]
    rows = {r.strategy: r for r in summarise(results, ideal=2.5)}
    assert rows["local"].speedup == 1.0 and rows["local"].median_ms == 1000.0
    assert rows["edgeci"].speedup == 2.0 and rows["edgeci"].efficiency == round(2.0 / 2.5, 3)
    median_exec = exec_seconds(results[4])
    assert median_exec == pytest.approx(0.5 - 0.01 - 0.1)
    assert rows["edgeci"].prediction_error == round(abs(0.3 - median_exec) / median_exec, 3)
    assert rows["modnn"].prediction_error is None and rows["modnn"].bytes == 1000.0


def test_the_report_gives_each_strategy_its_latency_quartiles() -> None:
    from cluster import diagnostics, quartiles, summarise, table

    assert quartiles([0.2]) == (0.2, 0.2)
    assert quartiles([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx((0.2, 0.4))
    results = [
        {
            "model": "resnet34",
            "strategy": s,
            "latency_s": t,
            "total_s": t,
            "auction_s": 0.0,
            "head_s": 0.001,
            "transfer_s": 0.0,
            "bytes": 0.0,
            "predicted_s": 0.14,
            "devices": [0],
            "stages": 1,
        }
        for s, ts in (("local", (0.10, 0.13, 0.14, 0.15, 0.17)), ("edgeci", (0.12, 0.14)))
        for t in ts
    ]
    diag = {d["strategy"]: d for d in diagnostics(results)}
    assert (diag["local"]["p25_ms"], diag["local"]["p75_ms"]) == (130.0, 150.0)
    assert (diag["edgeci"]["p25_ms"], diag["edgeci"]["p75_ms"]) == (125.0, 135.0)
    text = table(summarise(results, ideal=2.5), list(diag.values()), shaped=True)
    assert "p25-p75 ms" in text.splitlines()[0]
    assert "130-150" in text and "125-135" in text


def test_the_ceiling_releases_a_halo_strip_on_its_neighbours_and_lockstep_on_all() -> None:
    from compute_ceiling import released

    # Worker 0 finished 3 layers, 1 finished 3, 2 is still at 2, 3 is done.
    reached, waiting = [3, 3, 2, 1 << 30], [True, True, False, False]
    assert released("halo", reached, waiting) == [0]  # 1 waits for its neighbour 2
    assert released("conv", reached, waiting) == []  # everyone waits for 2
    assert released("conv", [3, 3, 3, 1 << 30], [True, True, True, False]) == [0, 1, 2]
    assert released("halo", [1, 0], [True, False]) == []


def test_homogeneous_peers_are_pinned_uncapped_and_torn_down() -> None:
    from emulation import homogeneous_cpus

    host = FakeHost()
    cpus = homogeneous_cpus(3, range(8))
    emu = Emulation(make_layout([None] * 3, 100.0, cpus=cpus), host)
    with emu.running():
        pids = [emu.spawn(slot, ["edgeci-peer"], {}, "/dev/null") for slot in emu.layout.peers]
        assert [host.pinned[p] for p in pids] == [1, 2, 3]
        assert not [c for c in host.cgroups if "edgeci-bench" in c]  # uncapped: no cgroups
        assert all(host.namespaces[s.namespace] for s in emu.layout.peers)
    assert host.ours() == []


@pytest.mark.parametrize("cgroup", CGROUPS, ids=str)
def test_a_warm_process_is_adopted_and_the_period_retuned(cgroup: CgroupFS) -> None:
    host = FakeHost()
    emu = Emulation(make_layout([0.4, 0.2], None, netns=False, cgroup=cgroup), host)
    with emu.running():
        pid = host.next_pid
        host.next_pid += 1
        host.procs[pid] = True  # a warm worker started outside; ignores SIGTERM
        slot = emu.layout.peers[1]
        assert slot.cgroup is not None
        emu.adopt(slot, pid)
        assert pid in host.cgroups[slot.cgroup] and pid in emu.pids
        emu.retune(10_000)
        assert emu.layout.period_us == 10_000
        if cgroup.version == 1:
            assert host.files[f"{slot.cgroup}/cpu.cfs_period_us"] == "10000\n"
            assert host.files[f"{slot.cgroup}/cpu.cfs_quota_us"] == "2000\n"
        else:
            assert host.files[f"{slot.cgroup}/cpu.max"] == "2000 10000\n"
        with pytest.raises(ValueError, match="minimum"):
            emu.retune(2000)  # 0.2 x 2 ms = 400 us: the kernel would refuse it
        assert emu.layout.period_us == 10_000
        assert emu.cpu_stat(slot) == {"nr_periods": 10, "nr_throttled": 4, "throttled_time": 123}
    assert not host.alive(pid)
    assert host.ours() == []

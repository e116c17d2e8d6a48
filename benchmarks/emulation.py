"""An emulated edge cluster on one machine: network namespaces, tbf-shaped veth links,
cgroup CPU quotas (v1 or v2), one peer process per namespace; and its teardown.

Layout (names start with ``prefix``, default ``edgeci-bench``)::

    <prefix>-sw            a "switch" namespace holding bridge br0
    <prefix>-0 .. -<N-1>   one namespace per peer: lo + eth0 (10.231.7.10+i/24)
                           eth0 <-veth-> p<i> on br0 in the switch namespace

Every veth end is created directly inside its namespace, so nothing of the
cluster ever lives in the root namespace and deleting the namespaces removes
every link and every qdisc with them. Each link is shaped with tbf on the egress
of both ends (the peer's upload and its download). CPU caps are cgroup directories
``<root>/<prefix>-<i>``: on cgroup v1 ``/sys/fs/cgroup/cpu/...`` with
``cpu.cfs_period_us``/``cpu.cfs_quota_us`` (joined through ``tasks``), on cgroup v2
``/sys/fs/cgroup/...`` with ``cpu.max`` "QUOTA PERIOD" (joined through
``cgroup.procs``, the controller enabled by ``+cpu`` in the root's
``cgroup.subtree_control``). The CFS period is a parameter (:data:`DEFAULT_PERIOD_US`):
a short one spreads a capped peer's pauses thinly, so it behaves like a slower CPU
rather than a full-speed one stopped for most of each period. A peer joins its
cgroup through a ``sh`` wrapper *before* it execs, so the process is capped from
its first instruction (its self-profiling included), optionally pins itself to a
core (``taskset``, the homogeneous layout), and enters its namespace with
``nsenter --net``: unlike ``ip netns exec`` that keeps the host's /sys, so the peer
can read its own quota from the cgroup files (edgeci_p2p/hostinfo.py).

Layouts (:func:`headroom_shares`, :func:`homogeneous_cpus`): the testbed's shares as
they are; ``headroom``, the same ratios scaled so that the quotas add up to at most
half the machine (the default below 8 cores: the peers, their event loops, the
client and the benchmark then never contend for cores); ``homogeneous``, N uncapped
peers each pinned to a core of its own, one core left for everything else. Capped
peers float over all cores unless packed (:func:`packed_cpus`, ``--pin packed``): each
pinned to one core, the cores' quotas balanced, so that a peer keeps one core's caches
between its CFS slices and shares them with one neighbour rather than with all.

All side effects go through a :class:`Host`, so the teardown logic can be tested
without root by a fake host that records commands (tests/test_emulation_teardown.py).
Teardown is idempotent and works from names, not from memory of what was made:
it removes whatever carries the prefix, so it also cleans up after a run that
was killed outright (``benchmarks/cluster.py --cleanup``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Protocol

PREFIX = "edgeci-bench"
PREFIXES = ("edgeci-bench", "edgeci-ceil", "edgeci-cfs", "edgeci-stream")
"""Every prefix this repository's benchmarks build under (``cluster.py --cleanup``)."""
CGROUP_CPU = "/sys/fs/cgroup/cpu"
CGROUP_V2_ROOT = "/sys/fs/cgroup"
CFS_PERIOD_US = 100_000
"""The kernel's default CFS period."""
DEFAULT_PERIOD_US = 10_000
"""The period the emulation uses unless told otherwise (``--cfs-period-ms``): 10 ms, from
a first rough reading of ``benchmarks/cfs_period.py --quick`` on the loaded 2-core
machine (100 ms: 36-69% of the operations of the 0.2-0.4-core peers ran at full speed,
the rest waited out pauses; 20 and 10 ms: none did, 10 ms had the tighter tails). To be
confirmed by the full measurement on a quiet machine (docs/cluster-benchmark.md)."""
MIN_QUOTA_US = 1000
"""The kernel refuses a quota (and a period) below 1 ms."""
NETNS_DIR = "/var/run/netns"
SUBNET = "10.231.7"
"""A private /24 that exists only inside the namespaces this module creates."""


@dataclass(frozen=True)
class CgroupFS:
    """Where and how CPU quotas are set: cgroup v1's cpu controller or cgroup v2."""

    version: int
    root: str
    """v1: the cpu controller's mount; v2: the unified hierarchy's root."""

    @property
    def join_file(self) -> str:
        """The file a process writes its pid to, to move itself into a cgroup."""
        return "tasks" if self.version == 1 else "cgroup.procs"

    def quota_files(self, share: float, period_us: int) -> list[tuple[str, str]]:
        """(file, text) pairs that cap a cgroup at ``share`` of a core, in write order."""
        quota = round(share * period_us)
        if self.version == 1:
            return [("cpu.cfs_period_us", f"{period_us}\n"), ("cpu.cfs_quota_us", f"{quota}\n")]
        return [("cpu.max", f"{quota} {period_us}\n")]

    def weight_file(self, cpu_shares: int) -> tuple[str, str]:
        """The relative weight, given in v1 ``cpu.shares`` units (default 1024); v2's
        ``cpu.weight`` is 100 by default, so it gets the same ratio to its default."""
        if self.version == 1:
            return "cpu.shares", f"{cpu_shares}\n"
        return "cpu.weight", f"{v2_weight(cpu_shares)}\n"

    def __str__(self) -> str:
        return f"cgroup v{self.version} ({self.root})"


CGROUP_V1 = CgroupFS(1, CGROUP_CPU)
CGROUP_V2 = CgroupFS(2, CGROUP_V2_ROOT)


def v2_weight(cpu_shares: int) -> int:
    """v1 ``cpu.shares`` (default 1024) as v2 ``cpu.weight`` (default 100, 1..10000)."""
    return max(1, min(10000, round(cpu_shares * 100 / 1024)))


def detect_cgroup(
    want: str = "auto", v1_root: str = CGROUP_CPU, v2_root: str = CGROUP_V2_ROOT
) -> tuple[CgroupFS | None, str]:
    """The cgroup file system that can cap CPUs here (v1 first where both exist, as on a
    hybrid host whose cpu controller is bound to v1), or None and why not."""
    v1 = Path(v1_root, "cpu.cfs_quota_us").is_file()
    controllers = Path(v2_root, "cgroup.controllers")
    v2 = controllers.is_file() and "cpu" in controllers.read_text().split()
    if want in ("auto", "v1") and v1:
        return CgroupFS(1, v1_root), f"cgroup v1 cpu quotas at {v1_root}"
    if want in ("auto", "v2") and v2:
        return CgroupFS(2, v2_root), f"cgroup v2 cpu.max under {v2_root}"
    if want == "v1":
        return None, f"no cgroup v1 cpu controller at {v1_root}"
    if want == "v2":
        return None, f"no cgroup v2 cpu controller at {v2_root} ({controllers} lacks cpu)"
    return None, (
        f"no cgroup v1 cpu controller at {v1_root} and no cgroup v2 cpu controller at {v2_root}"
    )


def machine_cores() -> list[int]:
    """The cores this process may run on (a container's or taskset's limit included)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


HEADROOM_BELOW_CORES = 8
"""Below this many cores the headroom layout is the default."""


def default_layout(cores: int) -> str:
    return "headroom" if cores < HEADROOM_BELOW_CORES else "testbed"


def headroom_shares(shares: Sequence[float], cores: int) -> list[float]:
    """``shares`` scaled, ratios kept, so that they add up to at most half of ``cores``
    (unchanged where they already do): on 2 cores 0.6/0.4/0.3/0.2 become
    0.4/0.2667/0.2/0.1333, whose ideal speed-up is still 2.5. The other half is for
    what the quotas do not cover: every peer's event loop and networking, the client,
    the benchmark, and whatever else the machine runs."""
    if not shares or min(shares) <= 0:
        raise ValueError(f"shares must be positive, got {list(shares)}")
    scale = min(1.0, cores / 2 / sum(shares))
    return [round(s * scale, 4) for s in shares]


def homogeneous_cpus(n: int, cores: Sequence[int]) -> list[int]:
    """Distinct cores for ``n`` uncapped peers, leaving the first core for the client,
    the benchmark and the rest of the machine; ValueError when there are too few."""
    if n < 1:
        raise ValueError(f"--homogeneous needs at least 1 peer, got {n}")
    if n > len(cores) - 1:
        raise ValueError(
            f"--homogeneous {n} needs {n + 1} cores (one per peer, one for the client "
            f"and the benchmark); this machine offers {len(cores)} ({list(cores)}): "
            f"at most --homogeneous {max(0, len(cores) - 1)} here"
        )
    return list(cores[1 : n + 1])


def packed_cpus(shares: Sequence[float], cores: Sequence[int]) -> list[int]:
    """A core for each capped peer, the largest share first onto the least loaded core,
    so that the cores' quotas stay balanced (on 2 cores 0.4/0.2667/0.2/0.1333 become
    0.4 + 0.1333 and 0.2667 + 0.2); ValueError when a core would carry more than one
    core's worth of quota.

    Why: a capped peer that floats runs each 1-3 ms CFS slice on whichever core is free,
    after the three other peers' slices there, and refills its caches every time (the
    512-channel layers' 9.4 MB of weights per convolution; docs/cluster-benchmark.md).
    A real device of that speed keeps its caches. Pinned, it shares one core's caches
    with one neighbour."""
    if not cores:
        raise ValueError("no cores to pin to")
    if not shares or min(shares) <= 0:
        raise ValueError(f"shares must be positive, got {list(shares)}")
    load = dict.fromkeys(cores, 0.0)
    out = [0] * len(shares)
    for i in sorted(range(len(shares)), key=lambda i: -shares[i]):
        core = min(cores, key=lambda c: (load[c], c))
        load[core] += shares[i]
        out[i] = core
    over = {c: round(v, 4) for c, v in load.items() if v > 1.0 + 1e-9}
    if over:
        raise ValueError(f"packing {list(shares)} onto cores {list(cores)} overloads {over}")
    return out


class CommandError(RuntimeError):
    """A setup command failed: carries the command and what it printed."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"command {' '.join(argv)!r} failed ({returncode}): {output.strip()}")
        self.argv = list(argv)
        self.returncode = returncode


class Host(Protocol):
    """The side effects the emulation needs; :class:`SystemHost` is the real one."""

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        """Run a command, return its stdout; raise CommandError on failure if ``check``."""
        ...

    def write(self, path: str, text: str) -> None: ...

    def mkdir(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def listdir(self, path: str) -> list[str]: ...

    def read(self, path: str) -> str: ...

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: str) -> int:
        """Start a process in a new session (its own process group); return its pid."""
        ...

    def kill(self, pid: int, sig: int, group: bool = False) -> bool:
        """Send ``sig`` (to the process group if ``group``); False if there is no such process."""
        ...

    def alive(self, pid: int) -> bool: ...

    def sleep(self, seconds: float) -> None: ...


class SystemHost:
    """The real machine."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        try:
            p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
        except FileNotFoundError as e:
            if check:
                raise CommandError(argv, 127, str(e)) from None
            return ""
        if check and p.returncode != 0:
            raise CommandError(argv, p.returncode, p.stderr or p.stdout)
        return p.stdout

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def read(self, path: str) -> str:
        try:
            return Path(path).read_text()
        except (FileNotFoundError, ProcessLookupError):
            return ""

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: str) -> int:
        with open(log, "ab") as out:
            p = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group: a terminal's Ctrl-C reaches only the benchmark,
                # which then tears the cluster down in order.
                start_new_session=True,
            )
        self._children[p.pid] = p
        return p.pid

    def kill(self, pid: int, sig: int, group: bool = False) -> bool:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def alive(self, pid: int) -> bool:
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None  # reaps our own zombies
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class PeerSlot:
    """One emulated device."""

    index: int
    namespace: str
    address: str
    share: float | None
    """Fraction of one core (cgroup cfs quota over the layout's period); None = uncapped."""
    cgroup: str | None
    cpu: int | None = None
    """The core the peer is pinned to (``taskset``); None = any."""


@dataclass(frozen=True)
class Layout:
    prefix: str
    peers: tuple[PeerSlot, ...]
    rate_mbit: float | None
    """tbf rate of every link, each direction; None = unshaped."""
    netns: bool = True
    """False: no namespaces, every peer on 127.0.0.1 (the unshaped fallback)."""
    cpu_weight: int | None = None
    """cgroup v1 ``cpu.shares`` of each peer's group (default 1024 when None; on v2 the
    same ratio to ``cpu.weight``'s default 100). A quota only caps: on a machine busy
    with other work, a 0.6-core peer gets its fair share of what is left, no more than
    a 0.3-core one. A high weight lets every peer get up to its quota first, so the
    quotas, not the neighbours, set the device speeds."""
    period_us: int = DEFAULT_PERIOD_US
    """The CFS period of every capped peer's cgroup."""
    cgroup: CgroupFS = CGROUP_V1

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def namespaces(self) -> list[str]:
        return [p.namespace for p in self.peers] + [self.switch] if self.netns else []


def check_quotas(shares: Sequence[float | None], period_us: int) -> None:
    """ValueError unless the kernel accepts ``period_us`` and every share's quota over it."""
    if not MIN_QUOTA_US <= period_us <= 1_000_000:
        raise ValueError(f"CFS period {period_us} us out of range (1000..1000000)")
    for s in shares:
        if s is not None and not 0.01 <= s <= 64:
            raise ValueError(f"cpu share {s} out of range (0.01..64 cores)")
        if s is not None and round(s * period_us) < MIN_QUOTA_US:
            raise ValueError(
                f"cpu share {s} over a {period_us} us period is a quota below the "
                f"kernel's minimum of {MIN_QUOTA_US} us: use a longer period"
            )


def check_pinning(shares: Sequence[float | None], cpus: Sequence[int | None]) -> None:
    """ValueError unless every core's pinned peers are one uncapped peer, or capped peers
    whose quotas add up to at most one core."""
    by_core: dict[int, list[float | None]] = {}
    for s, c in zip(shares, cpus, strict=True):
        if c is not None:
            by_core.setdefault(c, []).append(s)
    for c, on in by_core.items():
        if len(on) > 1 and (None in on or sum(s or 0.0 for s in on) > 1.0 + 1e-9):
            raise ValueError(
                f"peers pinned to the same core {c} with shares {on}: only capped peers "
                "whose quotas add up to at most one core may share a core"
            )


def make_layout(
    shares: Sequence[float | None],
    rate_mbit: float | None,
    prefix: str = PREFIX,
    netns: bool = True,
    cpu_weight: int | None = None,
    period_us: int = DEFAULT_PERIOD_US,
    cgroup: CgroupFS | None = None,
    cpus: Sequence[int | None] | None = None,
) -> Layout:
    """The cluster's plan: a peer per share (None: uncapped), pinned to ``cpus`` where
    given, capped through ``cgroup`` (None: whichever :func:`detect_cgroup` finds, v1
    where there is none)."""
    if cgroup is None:
        cgroup = detect_cgroup()[0] or CGROUP_V1
    if not 1 <= len(shares) <= 200:
        raise ValueError(f"need 1..200 peers, got {len(shares)}")
    if not netns and rate_mbit is not None:
        raise ValueError("links can only be shaped inside network namespaces")
    check_quotas(shares, period_us)
    cpus = [None] * len(shares) if cpus is None else list(cpus)
    if len(cpus) != len(shares):
        raise ValueError(f"{len(cpus)} pinned cores for {len(shares)} peers")
    check_pinning(shares, cpus)
    peers = tuple(
        PeerSlot(
            i,
            f"{prefix}-{i}" if netns else "",
            f"{SUBNET}.{10 + i}" if netns else "127.0.0.1",
            s,
            None if s is None else f"{cgroup.root}/{prefix}-{i}",
            c,
        )
        for i, (s, c) in enumerate(zip(shares, cpus, strict=True))
    )
    if cpu_weight is not None and not 2 <= cpu_weight <= 262144:
        raise ValueError(f"cpu weight {cpu_weight} out of range (2..262144)")
    return Layout(prefix, peers, rate_mbit, netns, cpu_weight, period_us, cgroup)


def tbf(ns: str, dev: str, rate_mbit: float) -> list[str]:
    # burst 32kbit / latency 400ms: measured here to give 11.5 MB/s at 100 mbit (BRIEF 4).
    return [
        "tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
        "rate", f"{rate_mbit:g}mbit", "burst", "32kbit", "latency", "400ms",
    ]  # fmt: skip


@dataclass
class Leftovers:
    """What of a cluster still exists; empty means torn down."""

    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    qdiscs: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.links or self.qdiscs or self.cgroups or self.processes)

    def __str__(self) -> str:
        parts = [f"{k}: {v}" for k, v in vars(self).items() if v]
        return "; ".join(parts) or "nothing"


class Emulation:
    """Set up, populate and tear down one emulated cluster on ``host``."""

    def __init__(self, layout: Layout, host: Host) -> None:
        self.layout = layout
        self.host = host
        self.pids: list[int] = []
        self._torn_down = False

    # ---- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        """Namespaces, bridge, shaped veths, cgroups. Refuses to run over leftovers of an
        earlier run (they would be torn down with ours and could hide a teardown bug)."""
        left = self.leftovers()
        if left:
            raise RuntimeError(
                f"an earlier emulated cluster still exists ({left}); "
                "remove it with: benchmarks/cluster.py --cleanup"
            )
        self._torn_down = False
        h, lay = self.host, self.layout
        if lay.cgroup.version == 2 and any(p.cgroup is not None for p in lay.peers):
            # v2: the cpu controller must be enabled in the parent (here the root) for its
            # children to have cpu.max. Left enabled afterwards: it is on by default on
            # systemd machines, and other groups may rely on it by then.
            control = f"{lay.cgroup.root}/cgroup.subtree_control"
            if "cpu" not in h.read(control).split():
                h.write(control, "+cpu\n")
        if not lay.netns:
            for p in lay.peers:
                self._make_cgroup(p)
            return
        sw = lay.switch
        h.run(["ip", "netns", "add", sw])
        h.run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        h.run(["ip", "-n", sw, "link", "set", "br0", "up"])
        h.run(["ip", "-n", sw, "link", "set", "lo", "up"])
        for p in lay.peers:
            ns, port = p.namespace, f"p{p.index}"
            h.run(["ip", "netns", "add", ns])
            h.run(
                ["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                 "peer", "name", port, "netns", sw]
            )  # fmt: skip
            h.run(["ip", "-n", sw, "link", "set", port, "master", "br0"])
            h.run(["ip", "-n", sw, "link", "set", port, "up"])
            h.run(["ip", "-n", ns, "addr", "add", f"{p.address}/24", "dev", "eth0"])
            h.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            h.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            # No default route in a namespace: mDNS needs a route for the multicast group.
            h.run(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
            if lay.rate_mbit is not None:
                h.run(tbf(ns, "eth0", lay.rate_mbit))  # the peer's upload
                h.run(tbf(sw, port, lay.rate_mbit))  # its download
            self._make_cgroup(p)

    def _make_cgroup(self, p: PeerSlot) -> None:
        if p.cgroup is not None and p.share is not None:
            h, lay = self.host, self.layout
            h.mkdir(p.cgroup)
            for name, text in lay.cgroup.quota_files(p.share, lay.period_us):
                h.write(f"{p.cgroup}/{name}", text)
            if lay.cpu_weight is not None:
                name, text = lay.cgroup.weight_file(lay.cpu_weight)
                h.write(f"{p.cgroup}/{name}", text)

    def command(self, slot: PeerSlot, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the slot's cgroup, on its core and in its namespace:
        ``sh`` joins the cgroup and execs ``taskset``, which execs ``nsenter``, which
        execs ``argv``: one pid, capped and pinned from its first instruction."""
        inner = list(argv)
        if slot.namespace:
            # nsenter --net, not ip netns exec: the latter mounts a fresh /sys, which
            # hides the cgroup files a peer reads its quota from.
            inner = ["nsenter", f"--net={NETNS_DIR}/{slot.namespace}", "--", *inner]
        if slot.cpu is not None:
            inner = ["taskset", "-c", str(slot.cpu), *inner]
        if slot.cgroup is not None:
            join = f"{slot.cgroup}/{self.layout.cgroup.join_file}"
            inner = ["sh", "-c", f'echo $$ > {join} && exec "$@"', "sh", *inner]
        return inner

    def adopt(self, slot: PeerSlot, pid: int) -> None:
        """Move a running process (all its threads) into the slot's cgroup, and count it
        as ours for teardown: a worker can then start (import torch, load a model) at
        full speed and be capped only for what is measured."""
        self.pids.append(pid)
        if slot.cgroup is not None:
            self.host.write(f"{slot.cgroup}/cgroup.procs", f"{pid}\n")

    def retune(self, period_us: int) -> None:
        """Give every capped peer a new CFS period, its share unchanged."""
        lay = replace(self.layout, period_us=period_us)
        check_quotas([p.share for p in lay.peers], period_us)
        for p in lay.peers:
            if p.cgroup is not None and p.share is not None:
                for name, text in lay.cgroup.quota_files(p.share, period_us):
                    self.host.write(f"{p.cgroup}/{name}", text)
        self.layout = lay

    def cpu_stat(self, slot: PeerSlot) -> dict[str, int]:
        """The slot's cgroup ``cpu.stat`` (nr_periods, nr_throttled, and throttled_time in
        ns on v1 or throttled_usec on v2); empty for an uncapped slot."""
        if slot.cgroup is None:
            return {}
        out = {}
        for line in self.host.read(f"{slot.cgroup}/cpu.stat").splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def spawn(self, slot: PeerSlot, argv: Sequence[str], env: Mapping[str, str], log: str) -> int:
        """Start ``argv`` inside the slot's namespace and cgroup; the pid is recorded for
        teardown before anything else can go wrong."""
        pid = self.host.spawn(self.command(slot, argv), env, log)
        self.pids.append(pid)
        return pid

    # ---- teardown ---------------------------------------------------------------------

    def _our_namespaces(self) -> list[str]:
        out = self.host.run(["ip", "netns", "list"], check=False)
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(self.layout.prefix + "-")]

    def _our_cgroups(self) -> list[str]:
        root = self.layout.cgroup.root
        return [
            f"{root}/{d}" for d in self.host.listdir(root) if d.startswith(self.layout.prefix + "-")
        ]

    def teardown(self, grace: float = 5.0) -> Leftovers:
        """Stop every process, delete namespaces (with their links and qdiscs) and cgroups.

        Never raises on a missing resource: it is called from finally blocks, signal
        handlers and atexit, possibly twice, possibly after a half-finished setup.
        Returns what could not be removed (empty when all went).
        """
        h = self.host
        # 1. Our peers: SIGTERM (they stop mDNS cleanly), then SIGKILL after a grace period.
        for pid in self.pids:
            h.kill(pid, signal.SIGTERM, group=True)
        deadline = grace
        while any(h.alive(p) for p in self.pids) and deadline > 0:
            h.sleep(0.1)
            deadline -= 0.1
        for pid in self.pids:
            if h.alive(pid):
                h.kill(pid, signal.SIGKILL, group=True)
        # 2. Anything else still inside our namespaces or cgroups (a measuring client,
        # a process of a killed earlier run) is ours too.
        namespaces = self._our_namespaces()
        cgroups = self._our_cgroups()
        strays: set[int] = set()
        for ns in namespaces:
            strays.update(_pids(h.run(["ip", "netns", "pids", ns], check=False)))
        for cg in cgroups:
            strays.update(_pids(h.read(f"{cg}/cgroup.procs")))
        strays.discard(os.getpid())
        for pid in sorted(strays):
            h.kill(pid, signal.SIGKILL)
        waited = 0.0
        while any(h.alive(p) for p in [*self.pids, *strays]) and waited < 5.0:
            h.sleep(0.1)
            waited += 0.1
        # 3. Namespaces: their veths, bridge and qdiscs go with them.
        for ns in namespaces:
            h.run(["ip", "netns", "del", ns], check=False)
        # 4. cgroups: rmdir succeeds once the last task has exited.
        for cg in cgroups:
            for _ in range(20):
                try:
                    h.rmdir(cg)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    h.sleep(0.1)
        self._torn_down = True
        return self.leftovers()

    def leftovers(self) -> Leftovers:
        h, prefix = self.host, self.layout.prefix
        left = Leftovers()
        left.namespaces = self._our_namespaces()
        left.cgroups = self._our_cgroups()
        # The cluster never creates links in the root namespace; a link or qdisc there
        # with one of our names would mean a setup that went wrong halfway.
        for line in h.run(["ip", "-o", "link", "show"], check=False).splitlines():
            parts = line.split(":")
            if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(prefix):
                left.links.append(parts[1].strip())
        for line in h.run(["tc", "qdisc", "show"], check=False).splitlines():
            words = line.split()
            if "dev" in words and words[words.index("dev") + 1].startswith(prefix):
                left.qdiscs.append(line.strip())
        left.processes = [p for p in self.pids if h.alive(p)]
        return left

    @contextlib.contextmanager
    def running(self) -> Iterator[Emulation]:
        """``with emu.running():`` set up, and tear down on any exit: normal, exception,
        Ctrl-C, SIGTERM/SIGHUP (turned into exceptions) or interpreter exit (atexit)."""
        restore = install_signal_handlers()
        atexit.register(self._atexit)
        try:
            self.setup()
            yield self
        finally:
            try:
                left = self.teardown_resolutely()
                if left:
                    print(f"cluster teardown left: {left}", file=sys.stderr)
            finally:
                atexit.unregister(self._atexit)
                restore()

    def teardown_resolutely(self, attempts: int = 3) -> Leftovers:
        """Teardown that a second Ctrl-C cannot cut short: signals are held back while it
        runs (delivered afterwards), and an interrupt that still gets through (or a fake
        host raising one) restarts it; the interrupt is re-raised once all is gone."""
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        interrupted: BaseException | None = None
        try:
            for _ in range(attempts):
                try:
                    left = self.teardown()
                    break
                except (KeyboardInterrupt, Terminated) as e:
                    interrupted = e
            else:
                left = self.leftovers()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if interrupted is not None:
            raise interrupted
        return left

    def _atexit(self) -> None:
        if not self._torn_down:
            self.teardown_resolutely()


def _pids(text: str) -> list[int]:
    return [int(w) for w in text.split() if w.isdigit()]


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind like Ctrl-C so that finally blocks run."""


def install_signal_handlers(
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP),
) -> Callable[[], None]:
    """Turn ``signals`` into :class:`Terminated`; returns a function restoring the old
    handlers. (SIGINT already raises KeyboardInterrupt.)"""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in signals}

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def can_emulate(host: Host | None = None, cgroup: str = "auto") -> tuple[bool, str]:
    """Whether this process can build a shaped cluster, and if not, why (``cgroup``:
    auto, v1 or v2, the cgroup version to cap CPUs with)."""
    if os.geteuid() != 0:
        return False, "not root (namespaces, tc and cgroups need root)"
    fs, why = detect_cgroup(cgroup)
    if fs is None:
        return False, why
    if shutil.which("nsenter") is None:
        return False, "no nsenter (util-linux) to enter a peer's network namespace"
    host = host or SystemHost()
    probe = f"{PREFIX}-probe{os.getpid()}"
    try:
        host.run(["ip", "netns", "add", probe])
    except (CommandError, FileNotFoundError, subprocess.TimeoutExpired) as e:
        return False, f"cannot create a network namespace: {e}"
    host.run(["ip", "netns", "del", probe], check=False)
    try:
        host.run(["tc", "-V"])
    except (CommandError, FileNotFoundError) as e:
        return False, f"no tc: {e}"
    return True, f"root, network namespaces, tc and {why}"

"""An emulated edge cluster on one machine: network namespaces, tbf-shaped veth links,
cgroup v1 CPU quotas, one peer process per namespace; and its teardown.

Layout (names start with ``prefix``, default ``edgeci-bench``)::

    <prefix>-sw            a "switch" namespace holding bridge br0
    <prefix>-0 .. -<N-1>   one namespace per peer: lo + eth0 (10.231.7.10+i/24)
                           eth0 <-veth-> p<i> on br0 in the switch namespace

Every veth end is created directly inside its namespace, so nothing of the
cluster ever lives in the root namespace and deleting the namespaces removes
every link and every qdisc with them. Each link is shaped with tbf on the egress
of both ends (the peer's upload and its download). CPU caps are cgroup v1
directories ``/sys/fs/cgroup/cpu/<prefix>-<i>``; a peer joins its cgroup through
a ``sh`` wrapper *before* it execs, so the process is capped from its first
instruction (its self-profiling included).

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
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

PREFIX = "edgeci-bench"
CGROUP_CPU = "/sys/fs/cgroup/cpu"
CFS_PERIOD_US = 100_000
SUBNET = "10.231.7"
"""A private /24 that exists only inside the namespaces this module creates."""


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
    """Fraction of one core (cgroup cfs quota over a 100 ms period); None = uncapped."""
    cgroup: str | None


@dataclass(frozen=True)
class Layout:
    prefix: str
    peers: tuple[PeerSlot, ...]
    rate_mbit: float | None
    """tbf rate of every link, each direction; None = unshaped."""
    netns: bool = True
    """False: no namespaces, every peer on 127.0.0.1 (the unshaped fallback)."""
    cpu_weight: int | None = None
    """cgroup v1 ``cpu.shares`` of each peer's group (default 1024 when None). A quota
    only caps: on a machine busy with other work, a 0.6-core peer gets its fair share
    of what is left, no more than a 0.3-core one. A high weight lets every peer get up
    to its quota first, so the quotas, not the neighbours, set the device speeds."""

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def namespaces(self) -> list[str]:
        return [p.namespace for p in self.peers] + [self.switch] if self.netns else []


def make_layout(
    shares: Sequence[float | None],
    rate_mbit: float | None,
    prefix: str = PREFIX,
    netns: bool = True,
    cpu_weight: int | None = None,
) -> Layout:
    if not 1 <= len(shares) <= 200:
        raise ValueError(f"need 1..200 peers, got {len(shares)}")
    if not netns and rate_mbit is not None:
        raise ValueError("links can only be shaped inside network namespaces")
    for s in shares:
        if s is not None and not 0.01 <= s <= 64:
            raise ValueError(f"cpu share {s} out of range (0.01..64 cores)")
    peers = tuple(
        PeerSlot(
            i,
            f"{prefix}-{i}" if netns else "",
            f"{SUBNET}.{10 + i}" if netns else "127.0.0.1",
            s,
            None if s is None else f"{CGROUP_CPU}/{prefix}-{i}",
        )
        for i, s in enumerate(shares)
    )
    if cpu_weight is not None and not 2 <= cpu_weight <= 262144:
        raise ValueError(f"cpu weight {cpu_weight} out of range (2..262144)")
    return Layout(prefix, peers, rate_mbit, netns, cpu_weight)


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
            h = self.host
            h.mkdir(p.cgroup)
            h.write(f"{p.cgroup}/cpu.cfs_period_us", f"{CFS_PERIOD_US}\n")
            h.write(f"{p.cgroup}/cpu.cfs_quota_us", f"{round(p.share * CFS_PERIOD_US)}\n")
            if self.layout.cpu_weight is not None:
                h.write(f"{p.cgroup}/cpu.shares", f"{self.layout.cpu_weight}\n")

    def spawn(self, slot: PeerSlot, argv: Sequence[str], env: Mapping[str, str], log: str) -> int:
        """Start ``argv`` inside the slot's namespace and cgroup; the pid is recorded for
        teardown before anything else can go wrong."""
        inner = ["ip", "netns", "exec", slot.namespace, *argv] if slot.namespace else list(argv)
        if slot.cgroup is not None:
            # Join the cgroup first, then exec (ip netns exec execs too): one pid, capped
            # from the start.
            inner = ["sh", "-c", f'echo $$ > {slot.cgroup}/tasks && exec "$@"', "sh", *inner]
        pid = self.host.spawn(inner, env, log)
        self.pids.append(pid)
        return pid

    # ---- teardown ---------------------------------------------------------------------

    def _our_namespaces(self) -> list[str]:
        out = self.host.run(["ip", "netns", "list"], check=False)
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(self.layout.prefix + "-")]

    def _our_cgroups(self) -> list[str]:
        return [
            f"{CGROUP_CPU}/{d}"
            for d in self.host.listdir(CGROUP_CPU)
            if d.startswith(self.layout.prefix + "-")
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


def can_emulate(host: Host | None = None) -> tuple[bool, str]:
    """Whether this process can build a shaped cluster, and if not, why."""
    if os.geteuid() != 0:
        return False, "not root (namespaces, tc and cgroups need root)"
    if not Path(f"{CGROUP_CPU}/cpu.cfs_quota_us").is_file():
        return False, f"no cgroup v1 cpu controller at {CGROUP_CPU}"
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
    return True, "root, network namespaces, tc and cgroup v1 cpu quotas available"

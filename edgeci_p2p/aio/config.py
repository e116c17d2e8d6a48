"""A peer's configuration (``edgeci-peer``'s flags) and its persistent node id."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edgeci_p2p.auction.aside import PATIENCE_S
from edgeci_p2p.core.membership import DuplicateNodeError
from edgeci_p2p.policy.deadlines import DeadlinePolicy


@dataclass
class PeerConfig:
    """How a peer runs: its addresses, discovery, models, limits and timeouts."""

    host: str = "0.0.0.0"
    port: int = 7420
    name: str = ""
    state_dir: Path | None = None
    mdns_interfaces: list[str] = field(default_factory=list)
    no_mdns: bool = False
    peers: list[tuple[str, int]] = field(default_factory=list)
    cluster_key: bytes | None = None
    threads: int = 1
    models: list[str] = field(default_factory=lambda: ["vgg16", "resnet34"])
    weights: dict[str, str] = field(default_factory=dict)
    bid_window: float = 0.1
    tile_deadline_factor: float = 4.0
    """A remote tile is given up after predicted time x this factor + the margin."""
    tile_deadline_margin: float = 2.0
    hedge_factor: float = 2.0
    """A remote tile still running after predicted time x this + hedge_margin gets a
    second copy on the next peer (or here); the first result wins."""
    hedge_margin: float = 0.5
    tile_retries: int = 2
    """Other peers tried for a lost tile before the auctioneer computes it itself."""
    max_requests: int = 8
    """Requests served at once as auctioneer; more get a 'busy' error."""
    max_queued_tiles: int = 64
    """Tiles accepted from auctioneers and not yet done; more get a 'busy' error."""
    read_timeout: float = 10.0
    """Seconds a half-received frame may wait for the rest before the connection closes."""
    forward_timeout: float = 60.0
    """Seconds a forwarded request may take on its peer before it runs here instead."""
    shared_medium: bool = True
    """Plan (as auctioneer) for one shared medium (Wi-Fi) rather than switched links."""
    link_bandwidth: float | None = None
    """Bytes/s to plan every link with, instead of fitting links from served tiles
    (links known in advance, e.g. wired at a fixed rate)."""
    host_id: str | None = None
    """The machine id this peer's bids carry (default: this machine's,
    :func:`edgeci_p2p.hostinfo.machine_id`). Peers with the same id share its cores
    and are planned as one pool of CPU; give emulated or test peers ids of their
    own to plan them as separate machines."""
    memory_limit: int | None = None
    """Bytes this peer may spend on weights and work (None: measured, see
    :mod:`edgeci_p2p.meminfo`)."""
    count_resident: bool = False
    """Charge the budget with what work leaves resident beyond the weights, measured
    from this process's VmRSS (``ModelStore.settle``). Only where the process is this
    one peer (``edgeci-peer`` sets it); peers sharing a process would each count all."""
    weights_idle_s: float = 300.0
    """Weights loaded on demand (a head) are dropped after this long unused."""
    http: tuple[str, int] | None = None
    """Serve ``/metrics``, the JSON API and the dashboard on this (host, port) (port 0:
    any free one); None: no HTTP side (``edgeci-peer --http``, ``aio/http.py``)."""
    zero_suppression: bool = True
    """Send feature maps zero-suppressed (docs/protocol.md 5.4); receiving them works
    either way."""
    calibrate_speed: bool = True
    """Bid with the profile scaled by how much slower (or faster) than predicted the
    work this peer serves runs (:mod:`edgeci_p2p.policy.calibration`); off: bid the
    profile as measured at start, whatever happens."""
    learn_piece_cost: bool = True
    """Learn, beside the speed, the fixed seconds each piece of work costs here
    (:class:`edgeci_p2p.policy.calibration.PieceOverhead`) and bid them, so that plans
    price every stage a peer runs; off: pieces cost only their units (as before)."""
    plan_aside: bool = True
    """Plan anew for moved speed figures in a child process of the lowest CPU priority
    (:mod:`edgeci_p2p.auction.aside`); off: in a thread of the daemon, which takes the
    CPU and the GIL from the requests it runs meanwhile (as before)."""
    plan_patience_s: float = PATIENCE_S
    """How long a new plan waits for this daemon to fall idle before the child plans it
    anyway (:func:`edgeci_p2p.auction.aside.hold`)."""
    plan_on_peers: bool = True
    """Send a new plan to a peer the plan at hand leaves out (the fastest), to make in
    its planning child (``plan_job``, :mod:`edgeci_p2p.aio.plan_peers`); off, or when
    that fails, this peer's own child makes it."""
    fold: bool = True
    """Fold VGG's fc1 into the last strips where that is sooner (``nn/fold.py``); off,
    no peer's plan folds and this peer keeps no second copy of fc1 (411 MB)."""
    worker_nice: int = 0
    """Niceness of the compute worker thread (``aio/timed.py``'s :func:`worker_pool`):
    above 0, the event loop runs first whenever it has work."""
    plaintext: bool = False
    """No TLS (benchmarks and diagnosis only; both ends must say so). By default every
    connection is TLS 1.3 bound to the handshake (docs/protocol.md section 6)."""
    allow_peers: frozenset[str] | None = None
    """When set, only peers with these node ids are let in (``--allow-peers FILE``)."""
    max_handshakes: int = 32
    """Inbound connections in their TLS and protocol handshake at once; more wait."""

    @property
    def deadlines(self) -> DeadlinePolicy:
        """The deadline and hedging policy these fields describe."""
        return DeadlinePolicy(
            self.tile_deadline_factor,
            self.tile_deadline_margin,
            self.hedge_factor,
            self.hedge_margin,
        )


def parse_http(value: str) -> tuple[str, int]:
    """``--http``'s ``[HOST:]PORT`` (loopback when only a port is given)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--http {value!r}: expected [HOST:]PORT") from None
    if not 0 <= number < 65536:
        raise ValueError(f"--http {value!r}: port out of range")
    return host.strip("[]") or "127.0.0.1", number


def read_allow_list(path: Path) -> frozenset[str]:
    """``--allow-peers FILE``: node ids one per line; blank lines and ``#`` comments
    are skipped (``edgeci peers`` shows each peer's id)."""
    ids = set()
    for line in path.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            ids.add(entry)
    return frozenset(ids)


def lock_state_dir(state_dir: Path) -> IO[str]:
    """A held lock on ``state_dir``: a second process there would present the same
    node id (the key pair lives there): refuse it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = (state_dir / "lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise DuplicateNodeError(
            f"another edgeci-peer is running with --state-dir {state_dir} (same node id); "
            "give each peer its own --state-dir"
        ) from None
    return lock

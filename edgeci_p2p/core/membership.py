"""Who is in the cluster and who is alive (pure; time comes in as ``now``).

Entries come from three sources — mDNS sightings, static ``--peer`` addresses
and inbound handshakes — and merge by node id once a handshake has told us the
id. A member is *alive* while heartbeats keep arriving; mDNS alone never makes a
member alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeci_p2p.core.cost import LinearFit

HEARTBEAT_INTERVAL = 1.0
"""Seconds between pings on every peer connection."""
DEAD_AFTER = 3.5
"""A member with no heartbeat for this long is not alive (about 3 missed pings)."""


class DuplicateNodeError(Exception):
    """Another process presents our own node id: two peers share a state dir or id."""


RTT_WINDOW = 16
"""Heartbeat RTTs a member's ``rtt`` is the minimum of."""
PROBE_BYTES = 128 << 10
"""Padding of a link-probe ping: long enough for the link's rate to show in its RTT."""
PROBE_WINDOW = 8
"""Link-probe samples a member's ``probed_bandwidth`` is the best of."""
PROBE_SPACING = 3.0
"""Seconds between probes until a member has PROBE_WINDOW of them (then one per
PROBE_EVERY): spread out, so that no single busy moment makes the whole window."""
PROBE_EVERY = 60.0
"""Seconds between link probes once a member has PROBE_WINDOW of them."""


@dataclass
class Member:
    node_id: str
    host: str
    port: int
    name: str = ""
    models: dict[str, str] = field(default_factory=dict)
    """Model name -> weights fingerprint, from the handshake."""
    sources: set[str] = field(default_factory=set)
    """'mdns', 'static', 'inbound'."""
    last_heartbeat: float | None = None
    rtt: float | None = None
    """The path's round trip: the least of the recent heartbeat RTTs."""
    rtt_samples: list[float] = field(default_factory=list)
    speed_gflops: float = 0.0
    backlog_s: float = 0.0
    rss: int = 0
    """Its resident memory, bytes, from its last bid to this node (0: unknown)."""
    holds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Model -> the weights it holds ('features', 'head'), from its last bids."""
    transfers: list[tuple[float, float]] = field(default_factory=list)
    """Recent (bytes moved, seconds beyond compute) of tiles sent to this peer."""
    bandwidth: float | None = None
    """Effective bytes/s fitted from those tiles (serialisation and hand-offs included)."""
    overhead: float | None = None
    """Fixed seconds per tile round trip fitted from them (beyond the ping RTT's share)."""
    probe_samples: list[tuple[int, float]] = field(default_factory=list)
    """(padding bytes, round trip) of recent link probes (a padded ping sent while this
    node was idle)."""
    probed_at: float | None = None

    @property
    def probed_bandwidth(self) -> float | None:
        """The link's rate: the best recent probe, each measured against the bare round
        trip as known now.

        A probe errs both ways. A pong held up by a busy or CPU-capped peer makes it
        slower than the link: the three probes taken back to back when a connection
        opened met each emulated peer's start-up and planned the slowest peer's link
        at 0.15-0.3 MB/s, on a 100 Mbit link, for whole benchmark runs (the planner
        then left that peer out); probes are now spread out (:data:`PROBE_SPACING`),
        so one of them meets a quiet peer, and the best is kept. A bare round trip
        still measured high (heartbeats that waited on a capped peer's quota) leaves a
        probe too little delay and makes it faster than the link: 27-83 MB/s were
        planned. The round trips kept here are each probe's own, so the rate is
        worked out again as the bare round trip (the least heartbeat RTT) comes down."""
        base = self.rtt if self.rtt is not None else 0.0
        rates = [n / (rtt - base) for n, rtt in self.probe_samples if rtt > base]
        return max(rates) if rates else None

    def probe_due(self, now: float) -> bool:
        """Time for a link probe (once the bare round trip is known: a probe's delay
        beyond it is the link's rate): every :data:`PROBE_SPACING` seconds until the
        window is full, then every :data:`PROBE_EVERY`."""
        if self.rtt is None:
            return False
        if self.probed_at is None:
            return True
        every = PROBE_SPACING if len(self.probe_samples) < PROBE_WINDOW else PROBE_EVERY
        return now - self.probed_at >= every

    def observe_transfer(self, nbytes: int, seconds: float, keep: int = 48) -> None:
        """A tile's bytes in + out took ``seconds`` beyond its compute: refit the link.

        ``seconds = bytes / bandwidth + overhead`` by least squares over the last
        ``keep`` tiles; with too few distinct sizes, bandwidth alone from their mean.
        """
        if nbytes <= 0 or seconds <= 0:
            return
        self.transfers.append((float(nbytes), seconds))
        del self.transfers[:-keep]
        pts = self.transfers
        if len({round(b, -3) for b, _ in pts}) >= 3 and len(pts) >= 6:
            fit = LinearFit.fit(pts)
            if fit.a > 0:
                self.bandwidth, self.overhead = 1.0 / fit.a, fit.b
                return
        total_b = sum(b for b, _ in pts)
        total_s = sum(t for _, t in pts)
        self.bandwidth, self.overhead = total_b / total_s, 0.0

    def alive(self, now: float) -> bool:
        return self.last_heartbeat is not None and now - self.last_heartbeat <= DEAD_AFTER

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "name": self.name,
            "address": f"{self.host}:{self.port}",
            "models": dict(self.models),
            "speed_gflops": round(self.speed_gflops, 3),
            "backlog_s": round(self.backlog_s, 4),
            "rss_mb": round(self.rss / 1e6, 1) if self.rss else None,
            "holds": {m: list(h) for m, h in self.holds.items()},
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "bandwidth_mb_s": None if self.bandwidth is None else round(self.bandwidth / 1e6, 1),
            "probed_mb_s": None
            if self.probed_bandwidth is None
            else round(self.probed_bandwidth / 1e6, 1),
            "tile_overhead_ms": None if self.overhead is None else round(self.overhead * 1e3, 2),
            "last_heartbeat_s": None
            if self.last_heartbeat is None
            else round(now - self.last_heartbeat, 3),
            "alive": self.alive(now),
            "sources": sorted(self.sources),
        }


class Membership:
    """The membership table of one node (``self_id``)."""

    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self.members: dict[str, Member] = {}

    def sighted(self, node_id: str, host: str, port: int, source: str) -> Member | None:
        """Record an address for ``node_id``; returns the member (None for ourselves)."""
        if node_id == self.self_id:
            return None
        m = self.members.get(node_id)
        if m is None:
            m = self.members[node_id] = Member(node_id, host, port)
        elif source != "inbound":
            m.host, m.port = host, port
        m.sources.add(source)
        return m

    def handshake(
        self,
        node_id: str,
        host: str,
        port: int,
        name: str,
        models: dict[str, str],
        now: float,
        source: str,
    ) -> Member:
        """A completed handshake: the peer is alive and its capabilities are known."""
        if node_id == self.self_id:
            raise DuplicateNodeError(
                f"peer at {host}:{port} presents our own node id {node_id}: two peers share "
                "a state dir or node id; give each peer its own --state-dir"
            )
        m = self.sighted(node_id, host, port, source)
        assert m is not None
        m.name, m.models = name, dict(models)
        m.last_heartbeat = now
        return m

    def heartbeat(self, node_id: str, now: float, rtt: float | None = None) -> None:
        m = self.members.get(node_id)
        if m is None:
            return
        m.last_heartbeat = now
        if rtt is not None:
            # The least recent RTT, not an average: a pong queued behind a megabyte
            # tile on a shaped link, or behind a CPU-capped peer's throttled loop,
            # measured 70-210 ms on 0.1 ms links, and the planner charges rtt/2 per
            # transfer. Queueing is in the transfer model already.
            m.rtt_samples.append(rtt)
            del m.rtt_samples[:-RTT_WINDOW]
            m.rtt = min(m.rtt_samples)

    def probed(self, node_id: str, now: float, nbytes: int, rtt: float) -> None:
        """The pong of a ping padded with ``nbytes`` came back after ``rtt`` seconds: a
        sample of the link's rate (its RTT is not a heartbeat RTT sample)."""
        m = self.members.get(node_id)
        if m is None:
            return
        m.last_heartbeat = now
        m.probed_at = now
        if nbytes <= 0:
            return
        m.probe_samples.append((nbytes, rtt))
        del m.probe_samples[:-PROBE_WINDOW]

    def lost(self, node_id: str) -> None:
        """The connection closed: not alive until a new handshake."""
        m = self.members.get(node_id)
        if m is not None:
            m.last_heartbeat = None

    def alive(self, now: float) -> list[Member]:
        return [m for m in self.members.values() if m.alive(now)]

    def serving(self, model: str, fingerprint: str, now: float) -> list[Member]:
        """Alive members holding exactly these weights: the only ones given work."""
        return [m for m in self.alive(now) if m.models.get(model) == fingerprint]


@dataclass
class BanList:
    """Peers that failed a tile, kept out of auctions with exponential backoff.

    The first failure bans for ``base`` seconds, each further one doubles it up to
    ``cap``; a success clears the peer.
    """

    base: float = 1.0
    cap: float = 60.0
    until: dict[str, float] = field(default_factory=dict)
    strikes: dict[str, int] = field(default_factory=dict)
    total: int = 0
    """Bans ever given (a counter for the metrics)."""

    def ban(self, node_id: str, now: float) -> float:
        """Record a failure; returns the seconds the peer is banned for."""
        self.total += 1
        n = self.strikes.get(node_id, 0) + 1
        self.strikes[node_id] = n
        seconds = float(min(self.cap, self.base * 2.0 ** (n - 1)))
        self.until[node_id] = now + seconds
        return seconds

    def clear(self, node_id: str) -> None:
        self.until.pop(node_id, None)
        self.strikes.pop(node_id, None)

    def banned(self, node_id: str, now: float) -> bool:
        return self.until.get(node_id, 0.0) > now

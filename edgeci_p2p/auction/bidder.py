"""The bidder: how one peer prices work and keeps its promises (pure; ``now`` passed in).

A bid is an honest prediction, never a table of chip names: each item's duration
is the peer's fitted compute model (from the profiler) applied to the item's
FLOPs per unit kind, slowed by the share of the CPU that other tenants are
measured to take, plus the link transfer both ways. Ahead of any new work sits
the peer's *committed* time: accepted work not yet done (the backlog) plus
reservations it has promised to auctioneers whose work has not yet arrived.

Winning an auction reserves capacity in the :class:`ReservationLedger` under a
lease. The reservation turns into backlog when the work arrives, or lapses when
the lease runs out first. A peer never promises more than ``horizon`` seconds of
committed work, nor more memory than it has free: it declines instead, so two
auctioneers bidding for the same idle peer at the same moment cannot both count
on it beyond its capacity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from edgeci_p2p.auction.messages import Award, AwardReply, Bid, CallForBids, WorkItem
from edgeci_p2p.core.cost import ComputeModel, LinkModel

EPS = 1e-9


@dataclass(frozen=True)
class Reservation:
    """Capacity a peer holds for an auctioneer until the work arrives."""

    auction_id: str
    seq: int
    seconds: float
    """Compute seconds the awarded items will take on this peer."""
    memory: int
    expires_at: float
    """On the peer's clock: after this the reservation lapses."""
    item_ids: tuple[str, ...] = ()


@dataclass
class ReservationLedger:
    """Active reservations of one peer, keyed by auction id."""

    active: dict[str, Reservation] = field(default_factory=dict)

    def expire(self, now: float) -> list[Reservation]:
        """Drop and return the reservations whose lease has run out at ``now``."""
        lapsed = [r for r in self.active.values() if r.expires_at <= now]
        for r in lapsed:
            del self.active[r.auction_id]
        return lapsed

    def seconds(self) -> float:
        return sum(r.seconds for r in self.active.values())

    def memory(self) -> int:
        return sum(r.memory for r in self.active.values())

    def hold(self, r: Reservation) -> None:
        self.active[r.auction_id] = r

    def take(self, auction_id: str) -> Reservation | None:
        return self.active.pop(auction_id, None)


@dataclass(frozen=True)
class Holding:
    """The weights a peer holds, as its bids tell them: all models' bytes, and for the
    model called (by fingerprint) the parts held and what loading each other part
    (``features``, ``head``) would add."""

    weights_bytes: int = 0
    held: tuple[str, ...] = ()
    load: Mapping[str, int] = field(default_factory=dict)
    droppable: int = 0
    """Of ``weights_bytes``, what the peer would drop to make room for the model called
    (other models' weights no running work uses, least recently used first)."""


def item_parts(item: WorkItem) -> tuple[str, ...]:
    """The weights an item runs with: the head for a head item, else the features."""
    return ("head",) if "head" in item.flops else ("features",)


@dataclass
class Bidder:
    """One peer's pricing and promise keeping."""

    name: str
    compute: ComputeModel
    """Measured on this peer (the profiler's fit per unit kind)."""
    link: LinkModel
    """This peer's estimate of its link to auctioneers."""
    memory_bytes: int = 1 << 30
    horizon: float = 10.0
    """Most seconds of committed work this peer will promise."""
    background: float = 0.0
    """Share of the CPU other tenants are measured to take (0 = idle, < 1)."""
    valid_for: float = 0.5
    """How long a bid stays valid after it reaches the auctioneer."""
    stale_tolerance: float = 0.5
    """Decline an award when committed work has grown since the quote by more than
    this fraction of the awarded work: the auctioneer's plan assumed a less busy
    peer and should re-plan rather than silently wait."""
    fingerprints: frozenset[str] | None = None
    """Models this peer has weights for (None: any)."""
    host: str = ""
    """Its machine's id, sent in bids (peers on one machine share its cores)."""
    cpus: float = 0.0
    """Cores its tile work can use."""
    host_cpus: float = 0.0
    """Cores of its machine."""
    strip_factor: float = 1.0
    """How many times its compute model's times its pieces of strip jobs take (sent in
    bids; the node's calibration of the strips it served sets it)."""
    hop_s: float = 0.0
    """How long its event loop takes to pick up what its busy worker hands back (sent
    in bids; the node learns it from the strips it served: ``policy/hops.py``)."""
    holding: Callable[[str], Holding] | None = None
    """The weights this peer holds, by fingerprint (None: nothing counted). Its
    ``memory_bytes`` is then the whole budget, weights included."""
    ledger: ReservationLedger = field(default_factory=ReservationLedger)
    busy_until: float = 0.0
    """When the accepted, delivered work queue drains (peer's clock)."""
    _jobs: list[tuple[float, int]] = field(default_factory=list)
    """(done_at, memory) of delivered work still running or queued."""
    _called: dict[str, str] = field(default_factory=dict)
    """The model (fingerprint) of the latest calls bid on, by auction id: an award
    carries none, and the room it may take depends on it."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.background < 1.0:
            raise ValueError(
                f"bidder {self.name}: background CPU share {self.background} is not in [0, 1)"
            )

    # ---- state --------------------------------------------------------------------------

    def backlog(self, now: float) -> float:
        """Seconds of delivered work not yet done."""
        return max(0.0, self.busy_until - now)

    def committed(self, now: float) -> float:
        """Backlog plus reserved seconds: what any new work waits behind."""
        return self.backlog(now) + self.ledger.seconds()

    def held(self, fingerprint: str) -> Holding:
        return self.holding(fingerprint) if self.holding is not None else Holding()

    def free_memory(self, now: float, fingerprint: str = "") -> int:
        """The budget less the weights held (but those it would drop for the model
        ``fingerprint``), the work running and the work reserved."""
        running = sum(m for done, m in self._jobs if done > now)
        holding = self.held(fingerprint)
        weights = holding.weights_bytes - holding.droppable
        return self.memory_bytes - weights - running - self.ledger.memory()

    def item_memory(self, item: WorkItem, holding: Holding) -> int:
        """An item's working memory plus the weights it needs that are not held."""
        return item.memory + sum(holding.load.get(p, 0) for p in item_parts(item))

    def tick(self, now: float) -> list[Reservation]:
        """Forget finished jobs and lapsed leases; return the lapsed reservations."""
        self._jobs = [(d, m) for d, m in self._jobs if d > now]
        return self.ledger.expire(now)

    # ---- pricing ------------------------------------------------------------------------

    def compute_seconds(self, item: WorkItem) -> float:
        raw = 0.0
        for kind, f in item.flops.items():
            if f <= 0:
                continue
            fit = self.compute.fits.get(kind) or self.compute.fits.get("conv")
            if fit is None:
                raise KeyError(f"bidder {self.name}: no compute fit for {kind!r} (nor 'conv')")
            raw += fit.a * f + fit.b * item.calls.get(kind, 1)
        return raw / (1.0 - self.background)

    def duration(self, item: WorkItem) -> float:
        return (
            self.link.seconds(item.bytes_in)
            + self.compute_seconds(item)
            + self.link.seconds(item.bytes_out)
        )

    def bid(self, call: CallForBids, now: float) -> Bid:
        """A sealed bid for ``call``: a duration for every item this peer can take."""
        self.tick(now)
        self._called[call.auction_id] = call.fingerprint
        while len(self._called) > 256:
            del self._called[next(iter(self._called))]
        holding = self.held(call.fingerprint)
        base = Bid(
            call.auction_id,
            self.name,
            backlog=self.committed(now),
            free_memory=self.free_memory(now, call.fingerprint),
            bandwidth=self.link.bandwidth,
            rtt=self.link.rtt,
            valid_for=self.valid_for,
            host=self.host,
            cpus=self.cpus,
            host_cpus=self.host_cpus,
            piece_s=self.compute.piece_s,
            strip_factor=self.strip_factor,
            hop_s=self.hop_s,
            held=holding.held,
            load=dict(holding.load),
        )
        if self.fingerprints is not None and call.fingerprint not in self.fingerprints:
            return _declined(base, f"no weights for model {call.fingerprint[:12]!r}")
        if base.backlog >= self.horizon - EPS:
            return _declined(base, "capacity")
        durations: dict[str, float] = {}
        for it in call.items:
            if self.item_memory(it, holding) > base.free_memory:
                continue
            if base.backlog + self.compute_seconds(it) > self.horizon + EPS:
                continue
            durations[it.item_id] = self.duration(it)
        if not durations:
            return _declined(base, "no item fits in free memory and capacity")
        return replace(base, duration=durations)

    # ---- promises -----------------------------------------------------------------------

    def accept(self, award: Award, now: float) -> AwardReply:
        """Reserve capacity for ``award`` or decline it; never over-promise."""
        if award.bidder != self.name:
            raise ValueError(f"bidder {self.name} got an award addressed to {award.bidder}")
        self.tick(now)
        previous = self.ledger.active.get(award.auction_id)
        if previous is not None and previous.seq >= award.seq:
            # A duplicate or an out-of-date award: the newer promise stands.
            return AwardReply(award.auction_id, self.name, award.seq, False, "superseded")
        if previous is not None:
            self.ledger.take(award.auction_id)  # a re-plan replaces this auction's hold
        seconds = sum(self.compute_seconds(it) for it in award.items)
        # The weights an award's items need are in their ``memory`` (the auctioneer
        # adds what this peer's bid said loading would cost); the room they may take
        # counts the other models' weights, which would be dropped for them, unless
        # work reserved or running here needs that room first.
        memory = sum(it.memory for it in award.items)
        committed = self.committed(now)
        reason = ""
        if committed + seconds > self.horizon + EPS:
            reason = "capacity"
        elif memory > self.free_memory(now, self._called.get(award.auction_id, "")):
            reason = "memory"
        elif committed - award.quoted_backlog > self.stale_tolerance * seconds + EPS:
            reason = "stale"
        if reason:
            # Declining a re-award drops the earlier hold too: the round excludes a
            # peer that declines and never releases it, so a kept hold would leak
            # until its lease lapsed (found by tests/test_concurrent_load.py).
            return AwardReply(award.auction_id, self.name, award.seq, False, reason)
        self.ledger.hold(
            Reservation(
                award.auction_id,
                award.seq,
                seconds,
                memory,
                now + award.lease,
                tuple(it.item_id for it in award.items),
            )
        )
        return AwardReply(award.auction_id, self.name, award.seq, True)

    def release(self, auction_id: str) -> Reservation | None:
        """The auctioneer no longer needs the reservation (it re-planned)."""
        return self.ledger.take(auction_id)

    def deliver(self, auction_id: str, now: float) -> Reservation | None:
        """The awarded work arrived: its reservation becomes backlog.

        Returns None when there is no live reservation (the lease lapsed): the
        caller must then treat the work as unpromised.
        """
        self.tick(now)
        r = self.ledger.take(auction_id)
        if r is None:
            return None
        self.add_work(r.seconds, now, r.memory)
        return r

    def idle(self, now: float) -> None:
        """Nothing is queued or running here any more: the delivered work is done,
        however long it was predicted to take. Without this, work that ran faster
        than predicted stayed in the backlog until its predicted end, and the next
        request's bids said this peer was busy."""
        self.busy_until = min(self.busy_until, now)
        self._jobs.clear()

    def add_work(self, seconds: float, now: float, memory: int = 0) -> float:
        """Queue ``seconds`` of work outside any auction (e.g. the peer's own request).

        Returns when that work will be done.
        """
        self.busy_until = max(self.busy_until, now) + seconds
        if memory:
            self._jobs.append((self.busy_until, memory))
        return self.busy_until


def _declined(base: Bid, reason: str) -> Bid:
    return replace(base, duration={}, declined=reason)


def probe_items(flops_by_kind: Iterable[tuple[str, int]]) -> tuple[WorkItem, ...]:
    """Compute-only items at two sizes per unit kind: their bids reveal each kind's fit.

    A peer's bid durations for ``probe:<kind>:1`` and ``probe:<kind>:2`` (FLOPs F
    and F/2, no bytes) are two points of its ``a * F + b`` line for that kind,
    slowed by its background load, so the auctioneer can rebuild the peer's
    effective compute model from the bid alone (see ``awas.compute_from_bid``).
    """
    out: list[WorkItem] = []
    for kind, f in flops_by_kind:
        if f <= 1:
            continue
        out.append(WorkItem(f"probe:{kind}:1", {kind: f}))
        out.append(WorkItem(f"probe:{kind}:2", {kind: f // 2}))
    return tuple(out)

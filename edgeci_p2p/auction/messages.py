"""What AWAS peers say to each other: calls for bids, bids, awards, replies (pure data).

Every message is a frozen dataclass with ``to_dict`` / ``from_dict`` so that the
wire layer can carry it as a plain CBOR map. Durations are relative seconds, never
absolute clock readings: peers do not share a clock, so a bid says "valid for
0.5 s" and the auctioneer stamps the expiry on its own clock when the bid arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class MessageError(ValueError):
    """A peer sent an AWAS message that does not parse (the remote side's fault)."""


def _need(d: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in d:
        raise MessageError(f"{what}: missing field {key!r}")
    return d[key]


STRIP_FACTOR_RANGE = (0.25, 4.0)
"""What a bid's ``strip_factor`` may say (a calibration is bounded well inside it)."""


def _factor(value: Any, key: str) -> float:
    """A bid's optional factor (absent: 1), refused outside :data:`STRIP_FACTOR_RANGE`."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"bid: {key!r} must be a number, got {type(value).__name__}")
    lo, hi = STRIP_FACTOR_RANGE
    if not lo <= float(value) <= hi:
        raise MessageError(f"bid: {key!r} {value} is outside [{lo}, {hi}]")
    return float(value)


@dataclass(frozen=True)
class WorkItem:
    """One partition of a request's workload, as the auctioneer offers it."""

    item_id: str
    """Unique within one auction."""
    flops: Mapping[str, int]
    """FLOPs per unit kind ('conv', 'pool', 'block', 'head'), so each peer prices
    every kind with its own fitted speed."""
    bytes_in: int = 0
    """Bytes the auctioneer sends to the peer (the input slab, halo included)."""
    bytes_out: int = 0
    """Bytes the peer sends back (its output strip)."""
    memory: int = 0
    """Peak bytes the peer must hold while running the item."""
    calls: Mapping[str, int] = field(default_factory=dict)
    """Unit calls per kind (each pays the fit's fixed cost ``b``); absent kinds: one."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "flops": dict(self.flops),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "memory": self.memory,
            "calls": dict(self.calls),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkItem:
        flops = _need(d, "flops", "work item")
        calls = d.get("calls", {})
        if not isinstance(flops, Mapping) or not isinstance(calls, Mapping):
            raise MessageError(
                f"work item: 'flops' and 'calls' must be maps, got {type(flops).__name__}"
            )
        return cls(
            item_id=str(_need(d, "id", "work item")),
            flops={str(k): int(v) for k, v in flops.items()},
            bytes_in=int(d.get("bytes_in", 0)),
            bytes_out=int(d.get("bytes_out", 0)),
            memory=int(d.get("memory", 0)),
            calls={str(k): int(v) for k, v in calls.items()},
        )


@dataclass(frozen=True)
class CallForBids:
    """The auctioneer asks every live peer to price ``items``."""

    auction_id: str
    auctioneer: str
    """Peer name of the auctioneer (where the work comes from and results go)."""
    fingerprint: str
    """Model weights fingerprint: a peer without these weights cannot bid."""
    items: tuple[WorkItem, ...]
    window: float = 0.1
    """Seconds the auctioneer waits for bids; a bid arriving later is ignored."""

    def __post_init__(self) -> None:
        ids = [it.item_id for it in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"call {self.auction_id}: duplicate item ids in {ids}")

    def item(self, item_id: str) -> WorkItem:
        for it in self.items:
            if it.item_id == item_id:
                return it
        raise KeyError(f"call {self.auction_id} has no item {item_id!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "auction": self.auction_id,
            "auctioneer": self.auctioneer,
            "fingerprint": self.fingerprint,
            "items": [it.to_dict() for it in self.items],
            "window": self.window,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CallForBids:
        return cls(
            auction_id=str(_need(d, "auction", "call for bids")),
            auctioneer=str(_need(d, "auctioneer", "call for bids")),
            fingerprint=str(d.get("fingerprint", "")),
            items=tuple(WorkItem.from_dict(x) for x in _need(d, "items", "call for bids")),
            window=float(d.get("window", 0.1)),
        )


@dataclass(frozen=True)
class Bid:
    """A peer's sealed answer to a call for bids.

    The predicted finish of item ``i`` if the peer wins only that item is
    ``backlog + duration[i]``; winning more items queues them, which is how the
    auctioneer re-prices the rest (see :mod:`edgeci_p2p.auction.winner`).
    """

    auction_id: str
    bidder: str
    backlog: float = 0.0
    """Seconds of already accepted (or reserved) work queued ahead of anything new."""
    duration: Mapping[str, float] = field(default_factory=dict)
    """Per item id: seconds for transfer in + compute + transfer out. Items the
    peer cannot take (memory, capacity) are absent."""
    free_memory: int = 0
    bandwidth: float = 0.0
    """The bidder's estimate of its link to the auctioneer, bytes/s."""
    rtt: float = 0.0
    """... and its round-trip time, s."""
    valid_for: float = 0.5
    """Seconds after arrival at which the auctioneer must consider the bid stale."""
    declined: str = ""
    """Non-empty: the peer takes nothing in this auction, and says why."""
    host: str = ""
    """An id of the machine the bidder runs on (a hash of its machine id), so that
    peers sharing one machine are planned as one pool of CPU; empty: unknown."""
    cpus: float = 0.0
    """Cores the bidder's tile work can use (its threads, or its CPU quota if less)."""
    host_cpus: float = 0.0
    """Cores of the bidder's machine."""
    held: tuple[str, ...] = ()
    """The parts of the called model's weights the bidder holds ('features', 'head')."""
    load: Mapping[str, int] = field(default_factory=dict)
    """Bytes that loading each part it does not hold would add (part -> bytes)."""
    rss: int = 0
    """The bidder's resident memory, bytes (0: not said)."""
    piece_s: float = 0.0
    """Seconds each piece of work costs the bidder beyond its units' fits, as it learnt
    from the work it served (:attr:`edgeci_p2p.core.cost.ComputeModel.piece_s`)."""
    strip_factor: float = 1.0
    """How many times ``duration`` the bidder's pieces of strip jobs take, as it learnt
    from the strips it served (a strip-resident plan prices it with this)."""
    hop_s: float = 0.0
    """Seconds the bidder's event loop takes, while its worker computes, to pick up
    what is handed to it (:attr:`edgeci_p2p.core.cost.DeviceModel.hop_s`)."""

    def finish(self, item_id: str) -> float:
        return self.backlog + self.duration[item_id]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "auction": self.auction_id,
            "bidder": self.bidder,
            "backlog": self.backlog,
            "duration": dict(self.duration),
            "free_memory": self.free_memory,
            "bandwidth": self.bandwidth,
            "rtt": self.rtt,
            "valid_for": self.valid_for,
            "declined": self.declined,
        }
        if self.host:
            d.update(host=self.host, cpus=self.cpus, host_cpus=self.host_cpus)
        if self.held or self.load or self.rss:
            d.update(held=list(self.held), load=dict(self.load), rss=self.rss)
        if self.piece_s:
            d["piece_s"] = self.piece_s
        if self.strip_factor != 1.0:
            d["strip_factor"] = self.strip_factor
        if self.hop_s:
            d["hop_s"] = self.hop_s
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bid:
        dur = d.get("duration", {})
        if not isinstance(dur, Mapping):
            raise MessageError(f"bid: 'duration' must be a map, got {type(dur).__name__}")
        return cls(
            auction_id=str(_need(d, "auction", "bid")),
            bidder=str(_need(d, "bidder", "bid")),
            backlog=float(d.get("backlog", 0.0)),
            duration={str(k): float(v) for k, v in dur.items()},
            free_memory=int(d.get("free_memory", 0)),
            bandwidth=float(d.get("bandwidth", 0.0)),
            rtt=float(d.get("rtt", 0.0)),
            valid_for=float(d.get("valid_for", 0.5)),
            declined=str(d.get("declined", "")),
            host=str(d.get("host") or ""),
            cpus=float(d.get("cpus") or 0.0),
            host_cpus=float(d.get("host_cpus") or 0.0),
            held=tuple(str(p) for p in d.get("held") or ()),
            load={str(k): int(v) for k, v in (d.get("load") or {}).items()},
            rss=int(d.get("rss") or 0),
            piece_s=float(d.get("piece_s") or 0.0),
            strip_factor=_factor(d.get("strip_factor"), "strip_factor"),
            hop_s=float(d.get("hop_s") or 0.0),
        )


@dataclass(frozen=True)
class Award:
    """The auctioneer gives ``items`` to ``bidder``; the bidder must confirm."""

    auction_id: str
    bidder: str
    items: tuple[WorkItem, ...]
    seq: int = 0
    """Award generation within the auction: a re-plan issues a higher seq, and a
    reply to an older one is ignored."""
    lease: float = 2.0
    """Seconds the bidder holds the capacity for the work to arrive."""
    quoted_backlog: float = 0.0
    """The backlog the winning bid quoted: lets the bidder notice that it has
    since been promised to someone else."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "auction": self.auction_id,
            "bidder": self.bidder,
            "items": [it.to_dict() for it in self.items],
            "seq": self.seq,
            "lease": self.lease,
            "quoted_backlog": self.quoted_backlog,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Award:
        return cls(
            auction_id=str(_need(d, "auction", "award")),
            bidder=str(_need(d, "bidder", "award")),
            items=tuple(WorkItem.from_dict(x) for x in _need(d, "items", "award")),
            seq=int(d.get("seq", 0)),
            lease=float(d.get("lease", 2.0)),
            quoted_backlog=float(d.get("quoted_backlog", 0.0)),
        )


@dataclass(frozen=True)
class AwardReply:
    """The bidder's answer to an award: reserved, or declined with a reason."""

    auction_id: str
    bidder: str
    seq: int
    accepted: bool
    reason: str = ""
    """Why a decline happened ('capacity', 'memory', 'stale', ...)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "auction": self.auction_id,
            "bidder": self.bidder,
            "seq": self.seq,
            "accepted": self.accepted,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AwardReply:
        return cls(
            auction_id=str(_need(d, "auction", "award reply")),
            bidder=str(_need(d, "bidder", "award reply")),
            seq=int(d.get("seq", 0)),
            accepted=bool(_need(d, "accepted", "award reply")),
            reason=str(d.get("reason", "")),
        )


@dataclass(frozen=True)
class Release:
    """The auctioneer gives back a reservation it no longer needs (after a re-plan)."""

    auction_id: str
    bidder: str

    def to_dict(self) -> dict[str, Any]:
        return {"auction": self.auction_id, "bidder": self.bidder}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Release:
        return cls(str(_need(d, "auction", "release")), str(_need(d, "bidder", "release")))

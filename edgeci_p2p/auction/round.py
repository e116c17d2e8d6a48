"""One AWAS auction round, as a pure state machine (no I/O; ``now`` is passed in).

Theory of operation. The peer that receives a request becomes the auctioneer and
opens a round: it sends a call for bids to every live peer and collects sealed
bids until either every live peer has answered (a bid or a decline) or the bid
window closes (``get_timer()`` tells the caller when; it then calls
``handle_timer(now)``). Bids that arrive after that, name another auction, come
from a peer that was not called, or have expired by decision time are ignored
and recorded in ``ignored``. The round then *decides*: a decider (by default
the reverse auction of :mod:`edgeci_p2p.auction.winner`; AWAS+DPFL plugs in its
own, see :mod:`edgeci_p2p.auction.awas`) turns the valid bids into awards, one
per winning peer. With no valid bid the round ends in ``LOCAL``: the
auctioneer runs the request itself.

Winners must confirm. A confirmed award is a reservation on the peer, held under
a lease until the work is delivered. A peer that declines (it was promised to
someone else meanwhile), does not answer within the reply timeout, or whose
lease runs out before the work is delivered, is excluded and the round decides
again without it: peers whose share changed get a new award with a higher
``seq`` (the peer replaces its hold), peers that lost their share get a release.
Once every winner has confirmed, the round is ``COMMITTED``; once all the work
is delivered it is ``DONE``.

Every change of ``phase`` goes through :data:`TRANSITIONS`; an input the table
does not list for the current phase is a bug in the caller
(:class:`RoundStateError`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from edgeci_p2p.auction.messages import Award, AwardReply, Bid, CallForBids, Release, WorkItem
from edgeci_p2p.auction.winner import reverse_auction


class Phase(enum.Enum):
    COLLECTING = "collecting"
    """Call sent; waiting for bids until all live peers answered or the window closes."""
    DECIDING = "deciding"
    """Transient: winner determination over the valid bids."""
    AWARDING = "awarding"
    """Awards sent; waiting for every winner to confirm."""
    COMMITTED = "committed"
    """Every winner holds a reservation; the work is being delivered."""
    DONE = "done"
    """All awarded work delivered (terminal)."""
    LOCAL = "local"
    """No usable bid: the auctioneer runs the request itself (terminal)."""


class Input(enum.Enum):
    BID = "bid"
    DECLINE = "decline"
    CLOSE = "close"
    """All live peers answered, or the bid window closed."""
    AWARD = "award"
    """The decider placed the work: awards go out."""
    NO_BIDS = "no-bids"
    """Nothing to award to: run locally."""
    ACCEPT = "accept"
    ALL_ACCEPTED = "all-accepted"
    REJECT = "reject"
    """A winner declined its award, or did not answer in time."""
    DELIVER = "deliver"
    ALL_DELIVERED = "all-delivered"
    LAPSE = "lapse"
    """A reservation's lease ran out before its work was delivered."""


TRANSITIONS: Mapping[tuple[Phase, Input], Phase] = {
    (Phase.COLLECTING, Input.BID): Phase.COLLECTING,
    (Phase.COLLECTING, Input.DECLINE): Phase.COLLECTING,
    (Phase.COLLECTING, Input.CLOSE): Phase.DECIDING,
    (Phase.DECIDING, Input.AWARD): Phase.AWARDING,
    (Phase.DECIDING, Input.NO_BIDS): Phase.LOCAL,
    (Phase.AWARDING, Input.ACCEPT): Phase.AWARDING,
    (Phase.AWARDING, Input.ALL_ACCEPTED): Phase.COMMITTED,
    (Phase.AWARDING, Input.REJECT): Phase.DECIDING,
    (Phase.COMMITTED, Input.DELIVER): Phase.COMMITTED,
    (Phase.COMMITTED, Input.ALL_DELIVERED): Phase.DONE,
    (Phase.COMMITTED, Input.LAPSE): Phase.DECIDING,
}


class RoundStateError(RuntimeError):
    """The caller fed the round an input its current phase does not accept (our bug)."""


Decider = Callable[[CallForBids, Sequence[Bid]], Mapping[str, tuple[WorkItem, ...]]]
"""Valid bids -> the work items to award to each winning peer (empty: run locally)."""


def reverse_auction_decider(
    call: CallForBids, bids: Sequence[Bid]
) -> dict[str, tuple[WorkItem, ...]]:
    """The default decider: the called items, sold by :func:`winner.reverse_auction`."""
    a = reverse_auction([it.item_id for it in call.items], bids)
    out: dict[str, list[WorkItem]] = {}
    for it in call.items:
        peer = a.owner.get(it.item_id)
        if peer is not None:
            out.setdefault(peer, []).append(it)
    return {p: tuple(v) for p, v in out.items()}


@dataclass(frozen=True)
class RoundConfig:
    window: float = 0.1
    """Seconds to collect bids."""
    reply_timeout: float = 0.1
    """Seconds a winner has to confirm its award."""
    lease: float = 2.0
    """Seconds a winner holds its reservation for the work to arrive."""


@dataclass(frozen=True)
class Send:
    """A message the caller must send to ``to``."""

    to: str
    message: CallForBids | Award | Release


@dataclass
class AuctionRound:
    """The auctioneer's side of one auction (see the module docstring)."""

    call: CallForBids
    peers: frozenset[str]
    """The live peers called (membership's view when the round opened)."""
    config: RoundConfig = field(default_factory=RoundConfig)
    decide: Decider = reverse_auction_decider
    phase: Phase = Phase.COLLECTING
    bids: dict[str, Bid] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    """Bidder -> when its bid goes stale (auctioneer's clock)."""
    declined: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    """Peers the round will not use again, and why (declined award, timeout, lapse)."""
    ignored: list[tuple[str, str]] = field(default_factory=list)
    """(bidder, reason) of every bid that did not count."""
    awards: dict[str, Award] = field(default_factory=dict)
    """The current award of each winner."""
    accepted: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    history: list[tuple[Phase, Input, Phase]] = field(default_factory=list)
    opened_at: float = 0.0
    awarded_at: dict[str, float] = field(default_factory=dict)
    """When each current award went out: starts its reply timeout and its lease."""
    _seq: int = 0

    # ---- the one place phases change ---------------------------------------------------

    def _fire(self, event: Input) -> None:
        nxt = TRANSITIONS.get((self.phase, event))
        if nxt is None:
            raise RoundStateError(
                f"auction {self.call.auction_id}: input {event.value!r} "
                f"is not valid in phase {self.phase.value!r}"
            )
        self.history.append((self.phase, event, nxt))
        self.phase = nxt

    # ---- opening and timers --------------------------------------------------------------

    def start(self, now: float) -> list[Send]:
        """Open the round: the call for bids goes to every live peer."""
        self.opened_at = now
        if not self.peers:
            self._fire(Input.CLOSE)
            return self._decide(now)
        return [Send(p, self.call) for p in sorted(self.peers)]

    @property
    def window_closes(self) -> float:
        return self.opened_at + self.config.window

    def get_timer(self) -> float | None:
        """When the caller must call :meth:`handle_timer` next (None: no deadline)."""
        if self.phase is Phase.COLLECTING:
            return self.window_closes
        if self.phase is Phase.AWARDING:
            return min(
                self.awarded_at[p] + self.config.reply_timeout
                for p in self.awards
                if p not in self.accepted
            )
        if self.phase is Phase.COMMITTED:
            # The peer's lease started when it got the award, after we sent it:
            # counting from the send time errs on the safe side.
            pending = [p for p in self.awards if p not in self.delivered]
            return min(self.awarded_at[p] + self.config.lease for p in pending)
        return None

    def handle_timer(self, now: float) -> list[Send]:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        if self.phase is Phase.COLLECTING:
            self._fire(Input.CLOSE)
            return self._decide(now)
        if self.phase is Phase.AWARDING:
            for p in sorted(set(self.awards) - self.accepted):
                if self.awarded_at[p] + self.config.reply_timeout <= now:
                    self.excluded[p] = "no reply to award"
            self._fire(Input.REJECT)
            return self._decide(now)
        # COMMITTED: the leases of undelivered work have run out on the peers.
        for p in sorted(set(self.awards) - self.delivered):
            if self.awarded_at[p] + self.config.lease <= now:
                self.excluded[p] = "lease lapsed"
        self._fire(Input.LAPSE)
        return self._decide(now)

    # ---- inputs from peers -------------------------------------------------------------------

    def receive_bid(self, bid: Bid, now: float) -> list[Send]:
        reason = self._bid_problem(bid, now)
        if reason:
            self.ignored.append((bid.bidder, reason))
            return []
        if bid.declined:
            self._fire(Input.DECLINE)
            self.declined[bid.bidder] = bid.declined
        else:
            self._fire(Input.BID)
            self.bids[bid.bidder] = bid
            self.expires[bid.bidder] = now + bid.valid_for
        if set(self.bids) | set(self.declined) >= self.peers:
            self._fire(Input.CLOSE)
            return self._decide(now)
        return []

    def _bid_problem(self, bid: Bid, now: float) -> str:
        if bid.auction_id != self.call.auction_id:
            return f"bid for auction {bid.auction_id!r}"
        if bid.bidder not in self.peers:
            return "not a called peer"
        if self.phase is not Phase.COLLECTING or now > self.window_closes:
            return "late"
        if bid.bidder in self.bids or bid.bidder in self.declined:
            return "duplicate"
        if bid.valid_for <= 0:
            return "expired"
        return ""

    def may_decide(self, msg: Bid | AwardReply) -> bool:
        """Whether handling ``msg`` may run the planner (the last bid of the window, or a
        declined award): the caller can handle every other message at once, and hand
        only these to a thread."""
        if isinstance(msg, AwardReply):
            return not msg.accepted
        return set(self.bids) | set(self.declined) | {msg.bidder} >= self.peers

    def receive_reply(self, reply: AwardReply, now: float) -> list[Send]:
        award = self.awards.get(reply.bidder)
        if (
            self.phase is not Phase.AWARDING
            or reply.auction_id != self.call.auction_id
            or award is None
            or award.seq != reply.seq
        ):
            self.ignored.append((reply.bidder, f"reply to award seq {reply.seq} not pending"))
            return []
        if not reply.accepted:
            self.excluded[reply.bidder] = f"declined award: {reply.reason}"
            self._fire(Input.REJECT)
            return self._decide(now)
        self._fire(Input.ACCEPT)
        self.accepted.add(reply.bidder)
        if self.accepted >= set(self.awards):
            self._fire(Input.ALL_ACCEPTED)
        return []

    def awards_sent(self, now: float) -> None:
        """The caller finished sending the pending awards at ``now``.

        Deciding (a DPFL run) can take longer than the reply timeout; the peers'
        reply timeouts and leases must count from when the awards really left.
        """
        for p in self.awards:
            if p not in self.accepted and p not in self.delivered:
                self.awarded_at[p] = max(self.awarded_at[p], now)

    def mark_delivered(self, peer: str, now: float) -> None:
        """The caller handed ``peer`` its awarded work (before the lease lapsed)."""
        if self.phase is not Phase.COMMITTED or peer not in self.awards:
            raise RoundStateError(
                f"auction {self.call.auction_id}: no committed award to deliver to {peer!r}"
            )
        self._fire(Input.DELIVER)
        self.delivered.add(peer)
        if self.delivered >= set(self.awards):
            self._fire(Input.ALL_DELIVERED)

    # ---- deciding ------------------------------------------------------------------------

    def usable_bids(self, now: float) -> list[Bid]:
        """Bids a decision may use now: not excluded, and not expired unless the peer
        still holds a reservation from this round (its quote was honoured)."""
        return [
            b
            for p, b in sorted(self.bids.items())
            if p not in self.excluded and (self.expires[p] > now or p in self.accepted)
        ]

    def _may_hold(self, peer: str) -> bool:
        """Whether ``peer`` may still hold a reservation we no longer want: anyone but
        a peer that declined (a silent peer's late acceptance may be in flight)."""
        return not self.excluded.get(peer, "").startswith("declined")

    def _decide(self, now: float) -> list[Send]:
        for p in sorted(self.bids):
            if self.expires[p] <= now and p not in self.accepted and p not in self.excluded:
                self.ignored.append((p, "expired"))
                self.excluded[p] = "bid expired"
        bids = self.usable_bids(now)
        decided = self.decide(self.call, bids) if bids else {}
        placed = {p: items for p, items in decided.items() if items}
        out: list[Send] = []
        if not placed:
            for p in sorted(self.awards):
                if self._may_hold(p):
                    out.append(Send(p, Release(self.call.auction_id, p)))
            self.awards.clear()
            self.accepted.clear()
            self.delivered.clear()
            self._fire(Input.NO_BIDS)
            return out
        self._seq += 1
        quotes = {b.bidder: b.backlog for b in bids}
        for p in sorted(set(self.awards) - set(placed)):
            if self._may_hold(p):
                out.append(Send(p, Release(self.call.auction_id, p)))
            self.awards.pop(p)
            self.accepted.discard(p)
            self.delivered.discard(p)
        for p, items in sorted(placed.items()):
            old = self.awards.get(p)
            if old is not None and old.items == items and p in self.accepted:
                continue  # its reservation (or delivered work) already covers exactly this
            self.accepted.discard(p)
            self.delivered.discard(p)
            award = Award(
                self.call.auction_id, p, items, self._seq, self.config.lease, quotes.get(p, 0.0)
            )
            self.awards[p] = award
            self.awarded_at[p] = now
            out.append(Send(p, award))
        self._fire(Input.AWARD)
        if self.accepted >= set(self.awards):
            self._fire(Input.ACCEPT)
            self._fire(Input.ALL_ACCEPTED)
        return out

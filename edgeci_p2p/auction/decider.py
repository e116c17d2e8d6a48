"""What a round decides with, and what it decided (pure; time is passed in as ``now``).

A round's *decider* turns a call for bids and the bids into work items per peer and
remembers the plan it made: :class:`~edgeci_p2p.auction.awas.AwasPlanner` for our
strategies (AWAS + DPFL on live bids, backlog included), :class:`StaticPlanner` for
the baselines (one plan on the bidders' idle speeds, as their papers assume), both
behind a :class:`CachedDecider` keyed by the bids. :class:`AloneMemo` remembers a
recent finding that distributing does not pay, so that an idle node does not hold
the same round again.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.awas import (
    AwasPlanner,
    strip_items,
    testbed_from_bids,
    with_features_load,
    with_own_bid,
)
from edgeci_p2p.auction.round import AuctionRound
from edgeci_p2p.core.cost import ComputeModel, Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import Workload
from edgeci_p2p.planners import plan as plan_with

LOCAL_MARGIN = 0.1
"""AWAS+DPFL must predict at least this much gain over this node alone to distribute."""
ALONE_TTL = 1.0
"""Seconds a round's finding that distributing does not pay is reused while this node
is otherwise idle and its peers are the same (then a round is held again)."""
ALONE_IDLE_TTL = 10.0
"""The same when every peer bid with no backlog: busier peers could only make
distributing worse, so only a change of peers, links or this node's own load (which
the other conditions catch) could turn the finding; held longer."""


class StaticPlanner:
    """A round's decider for the baselines: plan once on the bidders' idle speeds."""

    def __init__(
        self,
        strategy: str,
        spec: ModelSpec,
        own: ComputeModel,
        shared_medium: bool = True,
    ) -> None:
        self.strategy, self.spec, self.shared_medium = strategy, spec, shared_medium
        self.plan: Plan | None = None
        self.testbed: Testbed | None = None
        self.own = own
        self._work = Workload(spec)

    def __call__(
        self, call: am.CallForBids, bids: Sequence[am.Bid]
    ) -> Mapping[str, tuple[am.WorkItem, ...]]:
        usable = with_own_bid(call, bids, self.own)
        if usable is None:
            self.plan = None
            return {}
        idle = [replace(b, backlog=0.0) for b in usable]
        tb, _ = testbed_from_bids(call, idle, 1.0, self.shared_medium)
        self.plan = plan_with(self.strategy, self.spec, tb)
        self.testbed = tb
        return with_features_load(strip_items(self.plan, self.spec, self._work), call, usable)


Entry = tuple[Mapping[str, tuple[am.WorkItem, ...]], Plan | None, Testbed | None, dict[str, str]]
"""A remembered decision: the work items per peer, the plan, its testbed, who was left out."""
Pending = tuple[am.CallForBids, tuple[am.Bid, ...], tuple[Any, ...]]
"""A round whose decision is still to be made: its call, its bids, their cache key."""

MATERIAL_SPEED = 0.15
"""A stale round is planned anew only when a bid's priced duration of some item moved
by more than this fraction since the bids the plan at hand was made for (or one of
:data:`MATERIAL_PIECE_S`, :data:`MATERIAL_BANDWIDTH`, :data:`MATERIAL_RTT_S`; see
:func:`moved_materially`)."""
MATERIAL_PIECE_S = 0.002
"""... or a bid's fixed seconds per piece by more than this."""
MATERIAL_BANDWIDTH = 0.25
"""... or a link's bandwidth by more than this fraction."""
MATERIAL_RTT_S = 0.003
"""... or a link's round trip by more than this."""


def moved_materially(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """Whether the bids of :meth:`CachedDecider.key` ``new`` differ from those of ``old``
    (of the same :meth:`CachedDecider.shape`) enough to plan for them anew.

    The bids' figures move every round: link estimates by a few percent (a capped
    peer's round trip by milliseconds), priced durations with them, memory by bytes.
    Each new figure was a job for the planning child, which runs inside the
    auctioneer's quota (in a default run of ``benchmarks/cluster.py``, all strategies
    back to back, the child took 12-35 ms of the 0.4-core auctioneer's CPU per VGG-16
    request of every strategy). Small moves are priced into the plan at hand (its
    prediction stays true) and the plan is made anew once they add up past these
    bounds (measured from the bids the plan at hand was made for, so drift counts).
    Measured, this left the child's CPU where it was (docs/cluster-benchmark.md,
    twenty-second session): most of its plans there follow calibration steps, which
    are material."""
    for a, b in zip(old[:-1], new[:-1], strict=True):
        (durations_a, piece_a, hop_a), (durations_b, piece_b, hop_b) = a[2], b[2]
        if abs(piece_a - piece_b) > MATERIAL_PIECE_S or hop_a != hop_b:
            return True  # a bidder's hop_s moves only past its own band (policy/hops.py)
        before, after = dict(durations_a), dict(durations_b)
        if before.keys() != after.keys():
            return True
        for item, t in before.items():
            u = after[item]
            if t <= 0.0 or u <= 0.0:
                if t != u:
                    return True
            elif max(t / u, u / t) > 1.0 + MATERIAL_SPEED:
                return True
        bw_a, bw_b = a[3], b[3]
        if bw_a <= 0.0 or bw_b <= 0.0:
            if bw_a != bw_b:
                return True
        elif max(bw_a / bw_b, bw_b / bw_a) > 1.0 + MATERIAL_BANDWIDTH:
            return True
        if abs(a[4] - b[4]) > MATERIAL_RTT_S:
            return True
    return False


class CachedDecider:
    """Remembers decisions by the bids they were made from (noise rounded away).

    An AWAS+DPFL decision costs one or more DPFL runs (0.1-0.5 s for 3-4 peers
    here), longer than a ResNet-34 forward; an unchanged cluster (same measured
    speeds and links, backlogs within 10 ms) gets the same plan back at once. When
    only the speed or link figures moved (a peer recalibrated, a link was measured
    anew), the round gets the plan for the old figures at once, priced on the new
    ones, and, where they moved materially (:func:`moved_materially`), the new ones
    are planned off its path (:meth:`take_pending`, or :meth:`refresh` here).
    """

    def __init__(
        self, inner: AwasPlanner | StaticPlanner, size: int = 64, stale_ok: bool = True
    ) -> None:
        self.inner = inner
        self.size = size
        self.stale_ok = stale_ok
        """Answer a round whose bids differ from a remembered one only in their speed
        figures with that one's decision, and leave the new decision to be made off
        the request's path (:meth:`take_pending`; see :meth:`__call__`)."""
        self.pending: Pending | None = None
        """The round a stale decision stood in for, until it is taken to be planned
        (:meth:`take_pending`, by ``aio/refresh.py``; or :meth:`refresh`)."""
        self.stale = 0
        """Decisions answered with a stale plan (for the metrics and tests)."""
        self._latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        """Per :meth:`shape`: the key of the newest decision made for it."""
        self.plan: Plan | None = None
        self.testbed: Testbed | None = None
        self.left_out: dict[str, str] = {}
        self._memo: dict[tuple[Any, ...], Entry]
        self._memo = {}
        self.hits = 0
        """Decisions answered from the memo (for the metrics)."""
        self.misses = 0

    @staticmethod
    def key(call: am.CallForBids, bids: Sequence[am.Bid]) -> tuple[Any, ...]:
        per_bid = tuple(
            (
                b.bidder,
                round(b.backlog / 0.05),  # 50 ms buckets of queued work
                (  # the speed figures (shape() leaves them out)
                    tuple(sorted((k, float(f"{v:.3g}")) for k, v in b.duration.items())),
                    round(b.piece_s, 4),
                    round(b.hop_s, 4),
                ),
                float(f"{b.bandwidth:.2g}"),
                round(b.rtt, 3),
                b.declined,
            )
            for b in sorted(bids, key=lambda b: b.bidder)
        )
        return (*per_bid, call.fingerprint)

    def __call__(
        self, call: am.CallForBids, bids: Sequence[am.Bid]
    ) -> Mapping[str, tuple[am.WorkItem, ...]]:
        k = self.key(call, bids)
        hit = self._memo.get(k)
        if hit is None:
            near = self._latest.get(self.shape(k))
            if self.stale_ok and near is not None and near in self._memo:
                # Only speed or link figures moved: a peer's online calibration changed its
                # bids (policy/calibration.py), or a link was measured anew, a few times a
                # minute. A new plan takes 0.3-1.6 s on an emulated 0.4-core auctioneer,
                # on this request's critical path; the plan for the old figures is close
                # and instant. This request runs that one; a later one gets the new one.
                self.stale += 1
                if moved_materially(near, k):
                    self.pending = (call, tuple(bids), k)
                hit = self._repriced(self._memo[near], call, bids)
            else:
                self.misses += 1
                hit = self._decide(call, bids, k)
        else:
            self.hits += 1
        items, self.plan, self.testbed, self.left_out = hit
        return items

    def _repriced(self, hit: Entry, call: am.CallForBids, bids: Sequence[am.Bid]) -> Entry:
        """A remembered decision with its plan priced on ``bids``' figures (AWAS; the
        baselines plan on idle speeds once, as their papers do, and keep theirs)."""
        items, plan, _, left = hit
        if plan is None or not isinstance(self.inner, AwasPlanner):
            return hit
        got = self.inner.reprice(plan, call, bids)
        return hit if got is None else (items, got[0], got[1], left)

    @staticmethod
    def shape(key: tuple[Any, ...]) -> tuple[Any, ...]:
        """A :meth:`key` without the bids' speed and link figures: the same bidders,
        backlogs, declines and weights. Decisions of one shape differ only in how the
        work is spread by speed and link; the plan of one is valid for another.

        Link figures are measured (``policy/links.py``) and move as often as speeds: on
        the emulated cluster a capped peer's round trip went from 3.6 to 8.7 ms between
        two requests, and that request planned on its path (714 ms of 1.38 s)."""
        *per_bid, fingerprint = key
        return (*((b[0], b[1], b[5]) for b in per_bid), fingerprint)

    def refresh(self) -> bool:
        """Make the decision a stale answer stood in for (run it off the request's
        path, in a thread: it is the planner's full cost); True if one was made."""
        pending = self.take_pending()
        if pending is None:
            return False
        self.decide_pending(pending)
        return True

    def decide_pending(self, pending: Pending) -> None:
        """Make the decision of a round :meth:`take_pending` gave, here."""
        self.misses += 1
        self._decide(*pending)

    def take_pending(self) -> Pending | None:
        """The round a stale answer stood in for, if its decision is still to be made;
        it is then the caller's to plan (elsewhere: ``auction/aside.py``) and
        :meth:`remember`."""
        pending, self.pending = self.pending, None
        if pending is None or pending[2] in self._memo:
            return None
        return pending

    def remember(self, k: tuple[Any, ...], hit: Entry) -> None:
        """Keep a decision made elsewhere for the bids of :meth:`key` ``k``."""
        self.misses += 1
        self._keep(k, hit)

    def _decide(self, call: am.CallForBids, bids: Sequence[am.Bid], k: tuple[Any, ...]) -> Entry:
        items = self.inner(call, bids)
        left = dict(getattr(self.inner, "left_out", {}))
        hit = (items, self.inner.plan, self.inner.testbed, left)
        self._keep(k, hit)
        return hit

    def _keep(self, k: tuple[Any, ...], hit: Entry) -> None:
        if len(self._memo) >= self.size:
            self._memo.pop(next(iter(self._memo)))
        self._memo[k] = hit
        self._latest[self.shape(k)] = k


@dataclass
class Decision:
    """The outcome of a request's auction: the plan to run and how it was reached."""

    plan: Plan
    testbed: Testbed
    round: AuctionRound | None
    left_out: dict[str, str] = field(default_factory=dict)
    spec: ModelSpec | None = None
    """The model as it was planned: with this request's input bytes a value and the
    maps' measured wire fractions (None: as the store describes it)."""

    @property
    def nodes(self) -> list[str]:
        return list(self.plan.devices)


def alone_ttl(bids: Iterable[am.Bid]) -> float:
    """How long a finding that distributing does not pay, made from ``bids``, holds."""
    return ALONE_IDLE_TTL if all(b.backlog <= 0 for b in bids) else ALONE_TTL


class AloneMemo:
    """Per kind of request, until when and among which peers a round found that
    distributing does not pay."""

    def __init__(self) -> None:
        self._found: dict[Hashable, tuple[float, frozenset[str]]] = {}

    def holds(self, key: Hashable, peers: Iterable[str], now: float) -> bool:
        found = self._found.get(key)
        return found is not None and found[0] > now and found[1] == set(peers)

    def forget(self, key: Hashable) -> None:
        self._found.pop(key, None)

    def remember(
        self, key: Hashable, bids: Iterable[am.Bid], peers: Iterable[str], now: float
    ) -> None:
        self._found[key] = (now + alone_ttl(bids), frozenset(peers))

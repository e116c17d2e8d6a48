"""Driving AWAS auction rounds over the network (asyncio glue around the pure round).

The pure :class:`~edgeci_p2p.auction.round.AuctionRound` decides; this module
only waits: it sends what the round returns (to peers over their connections,
to this node's own :class:`~edgeci_p2p.auction.bidder.Bidder` directly), feeds
bids and award replies back in, and calls ``handle_timer`` when the round's
timer is due. What a round decides with (the deciders, their cache, the memo of
findings that running alone is best) is pure: :mod:`edgeci_p2p.auction.decider`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgeci_p2p.aio.aside import PlanningAside
from edgeci_p2p.aio.refresh import Refresher
from edgeci_p2p.auction import decider as dec
from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.awas import AwasPlanner, probe_call
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.decider import (
    ALONE_IDLE_TTL,
    ALONE_TTL,
    AloneMemo,
    CachedDecider,
    Decision,
    StaticPlanner,
    alone_ttl,
)
from edgeci_p2p.auction.hosts import pool_colocated
from edgeci_p2p.auction.round import AuctionRound, Phase, RoundConfig, Send
from edgeci_p2p.core.cost import ComputeModel, DeviceModel, LinkModel, Testbed
from edgeci_p2p.core.plan import Plan, same_work, validate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners import OURS
from edgeci_p2p.planners import plan as plan_with
from edgeci_p2p.policy.outcomes import Choice, Outcomes

log = logging.getLogger("edgeci.auction")

AUCTIONED = OURS
"""Strategies planned by AWAS from live bids (backlog included); the baselines plan
once on the bidders' idle speeds, as their papers assume."""

Sender = Callable[[str, am.CallForBids | am.Award | am.Release], Awaitable[bool]]
"""Send an auction message to a peer; False when it could not be sent."""


@dataclass
class PlanningStats:
    """What this node's rounds spent deciding (counters for the metrics)."""

    seconds: float = 0.0
    decisions: int = 0
    cache_hits: int = 0

    def add(self, seconds: float, cache_hit: bool) -> None:
        self.seconds += seconds
        self.decisions += 1
        self.cache_hits += int(cache_hit)


class Auctioneer:
    """Runs this node's auction rounds; one per request, several may overlap."""

    def __init__(
        self,
        node_id: str,
        bidder: Bidder,
        send: Sender,
        config: RoundConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared_medium: bool = True,
        aside: PlanningAside | None = None,
    ) -> None:
        self.node_id = node_id
        self.shared_medium = shared_medium
        """Plan as if every link shares one medium (Wi-Fi) or as switched links."""
        self.fold = True
        """Let plans fold VGG's fc1 into their last strips (``edgeci-peer --no-fold``)."""
        self.bidder = bidder
        self.send = send
        self.config = config or RoundConfig()
        self.clock = clock
        self._inbox: dict[str, asyncio.Queue[am.Bid | am.AwardReply]] = {}
        self._planners: dict[tuple[Any, ...], CachedDecider] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._alone = AloneMemo()
        self._validated: dict[int, Plan] = {}
        """Per decider: the last plan of it that passed ``validate``."""
        self.outcomes = Outcomes()
        """What this node's own requests measured against their plans, alone and
        distributed: the choice between the two weighs both (policy/outcomes.py)."""
        """Per (strategy, model, size, itemsize, wire fractions): a recent finding that
        distributing does not pay."""
        self._local_plans: dict[tuple[str, tuple[int, int, int]], tuple[Any, Plan, Testbed]] = {}
        self.planning = PlanningStats()
        """Time spent deciding and how often the decision cache answered (metrics)."""
        self.refresh = Refresher(aside, self.planning.add)
        """Plans for the bids a stale decision answered, made off the requests' path."""

    async def close(self) -> None:
        """Stop planning in the background (the daemon is stopping)."""
        await self.refresh.close()

    # ---- inputs from the connections ---------------------------------------------------

    def on_bid(self, bid: am.Bid) -> None:
        q = self._inbox.get(bid.auction_id)
        if q is not None:
            q.put_nowait(bid)

    def on_reply(self, reply: am.AwardReply) -> None:
        q = self._inbox.get(reply.auction_id)
        if q is not None:
            q.put_nowait(reply)

    # ---- one round ----------------------------------------------------------------------

    def _decider(self, strategy: str, spec: ModelSpec) -> CachedDecider:
        """One cached decider per (strategy, model, input size, input bytes per value,
        maps' wire fractions), kept across requests."""
        key = (strategy, spec.name, spec.input_shape, spec.input_itemsize, spec.wire_fraction)
        decider = self._planners.get(key)
        if decider is None:
            # New wire fractions replace the old ones' decider: a long-lived node whose
            # inputs drift keeps one per kind of request, not one per drift.
            for old in [k for k in self._planners if k[:4] == key[:4]]:
                gone = id(self._planners.pop(old))
                self._locks.pop(gone, None)
                self._validated.pop(gone, None)
            inner: AwasPlanner | StaticPlanner = (
                AwasPlanner(spec, self.shared_medium, self.bidder.compute, strategy, fold=self.fold)
                if strategy in AUCTIONED
                else StaticPlanner(strategy, spec, self.bidder.compute, self.shared_medium)
            )
            decider = self._planners[key] = CachedDecider(inner)
        return decider

    async def run(
        self,
        auction_id: str,
        spec: ModelSpec,
        strategy: str,
        peers: Sequence[str],
        adjust_bid: Callable[[am.Bid], am.Bid] = lambda b: b,
        quiet: bool = False,
    ) -> Decision:
        """Call for bids from ``peers`` (and this node), award, and return the plan.

        ``adjust_bid`` lets the caller replace a bid's link figures with its own
        measurements of that peer's link before the round sees them. ``quiet``: this
        node runs no other request; then a round that found, less than
        :data:`ALONE_TTL` (:data:`ALONE_IDLE_TTL` if every peer was idle) ago and
        among the same peers, that distributing does not pay is not held again (its
        answer would be the same, and it costs 6-9 ms).
        """
        key = (strategy, spec.name, spec.input_shape, spec.input_itemsize, spec.wire_fraction)
        if quiet and self._alone.holds(key, peers, self.clock()):
            return self._alone_decision(spec, strategy, None, "(recent round)")
        self._alone.forget(key)
        decider = self._decider(strategy, spec)
        lock = self._locks.setdefault(id(decider), threading.Lock())
        # What this round decided, captured when it decided: the decider is shared by
        # every round of its (strategy, model, size), and others may decide meanwhile.
        picked: list[tuple[Plan | None, Testbed | None, dict[str, str]]] = []

        def decide(
            call: am.CallForBids, bids: Sequence[am.Bid]
        ) -> Mapping[str, tuple[am.WorkItem, ...]]:
            # Peers sharing a machine share its cores (auction/hosts.py).
            b = self.bidder  # this node's machine, for a round its own bid missed
            own = am.Bid("", self.node_id, host=b.host, cpus=b.cpus, host_cpus=b.host_cpus)
            pooled = pool_colocated(bids, self.node_id, own)
            with lock:
                t0, answered = time.perf_counter(), decider.hits + decider.stale
                items = decider(call, pooled)
                quick = decider.hits + decider.stale > answered  # no plan made here
                self.planning.add(time.perf_counter() - t0, quick)
                picked.append((decider.plan, decider.testbed, dict(decider.left_out)))
            return items

        call = probe_call(auction_id, self.node_id, spec, self.config.window)
        rnd = AuctionRound(call, frozenset([self.node_id, *peers]), self.config, decide=decide)
        inbox: asyncio.Queue[am.Bid | am.AwardReply] = asyncio.Queue()
        self._inbox[auction_id] = inbox
        try:
            await self._dispatch(rnd, rnd.start(self.clock()), inbox)
            while rnd.phase not in (Phase.COMMITTED, Phase.DONE, Phase.LOCAL):
                due = rnd.get_timer()
                timeout = None if due is None else max(0.0, due - self.clock())
                # A step may run the planner (0.1-0.8 s of pure Python): in a thread,
                # so that this node keeps serving tiles, heartbeats and other requests.
                try:
                    msg = await asyncio.wait_for(inbox.get(), timeout)
                except TimeoutError:
                    sends = await asyncio.to_thread(rnd.handle_timer, self.clock())
                else:
                    now = self.clock()
                    if isinstance(msg, am.Bid):
                        msg = adjust_bid(msg)
                        step: Callable[[Any, float], list[Any]] = rnd.receive_bid
                    else:
                        step = rnd.receive_reply
                    if rnd.may_decide(msg):
                        sends = await asyncio.to_thread(step, msg, now)
                    else:  # bookkeeping only: a thread hop would cost more than it
                        sends = step(msg, now)
                await self._dispatch(rnd, sends, inbox)
        finally:
            self._inbox.pop(auction_id, None)
        plan, testbed, left_out = picked[-1] if picked else (None, None, {})
        if decider.pending is not None:
            self.refresh.later(decider, lock)
        if rnd.phase is Phase.LOCAL or plan is None or testbed is None:
            log.info(
                "auction %s: running locally (phase %s; declined %s; excluded %s; ignored %s)",
                auction_id,
                rnd.phase.value,
                rnd.declined,
                rnd.excluded,
                rnd.ignored,
            )
            return self.local_decision(spec, rnd)
        if not same_work(self._validated.get(id(decider)), plan):
            # A cached decision hands the same plan to request after request; checking
            # it again cost ~0.7 ms of CPU (2 ms on a 0.4-core auctioneer) every time.
            validate(plan, spec)
            self._validated[id(decider)] = plan
        alone = len(set(plan.devices)) <= 1  # no other peer usable (declined, pooled...)
        choice = self._choose(plan, spec) if strategy in AUCTIONED and not alone else None
        if strategy in AUCTIONED and (alone or (choice is not None and not choice.distribute)):
            # The model leaves per-tile costs out (encoding, hand-offs): a predicted
            # gain smaller than LOCAL_MARGIN is not worth the risk; and a plan on this
            # node alone runs best as the one-stage local plan. Give back the holds.
            await self._send_all(rnd, _releases(rnd), inbox)
            self._alone.remember(key, rnd.bids.values(), peers, self.clock())
            decision = self._alone_decision(spec, strategy, rnd, "", choice)
            if alone:
                why = "; ".join(f"{p[:8]}: {r}" for p, r in sorted(left_out.items()))
                note = "local: no other peer can take work" + (f" ({why})" if why else "")
                decision.plan = replace(decision.plan, notes={"decision": note})
            decision.left_out = left_out
            return decision
        if choice is not None and choice.noted:
            plan = replace(plan, notes={**plan.notes, "decision": choice.why})
        return Decision(plan, testbed, rnd, left_out)

    def _alone_decision(
        self,
        spec: ModelSpec,
        strategy: str,
        rnd: AuctionRound | None,
        how: str,
        choice: Choice | None = None,
    ) -> Decision:
        """The local plan, under the requested strategy's name, saying why."""
        local = self.local_decision(spec, rnd)
        why = f"distributing predicted < {dec.LOCAL_MARGIN:.0%} gain"
        why = choice.why if choice is not None else why
        note = f"local: {why} {how}".strip()
        local.plan = replace(local.plan, strategy=strategy, notes={"decision": note})
        return local

    def _choose(self, plan: Plan, spec: ModelSpec) -> Choice:
        """Distribute ``plan`` or run alone: both predictions, each corrected by what
        this node's recent requests of its kind measured (policy/outcomes.py)."""
        local = self.local_decision(spec, None).plan.predicted
        if plan.predicted is None or local is None:
            return Choice(True, False, "no prediction to compare")
        model = (spec.name, spec.input_shape)
        now = self.clock()
        return self.outcomes.judge(
            plan.strategy, model, plan.predicted, local, now, dec.LOCAL_MARGIN
        )

    def ran(self, plan: Plan, spec: ModelSpec, seconds: float) -> None:
        """One of this node's requests ran ``plan`` (its maps and head) in ``seconds``; the
        first run of a plan (other stages than the last of its kind) is cold."""
        if plan.predicted is not None:
            alone, model = len(set(plan.devices)) <= 1, (spec.name, spec.input_shape)
            shape = (plan.devices, plan.stages, plan.head_device, plan.fold_head)
            now = self.clock()
            self.outcomes.ran(plan.strategy, model, alone, plan.predicted, seconds, now, shape)

    def local_decision(self, spec: ModelSpec, rnd: AuctionRound | None) -> Decision:
        """No usable bid: the whole request here (this node's measured model)."""
        key = (spec.name, spec.input_shape)
        got = self._local_plans.get(key)
        if got is None or got[0] is not self.bidder.compute:
            # Planned once per model and compute model: 4-6 ms that every auctioned
            # request would otherwise pay again to compare its plan with running here.
            tb = Testbed(
                "local",
                (self._own_device(),),
                (self.bidder.link,),
                source="this node alone",
            )
            got = self._local_plans[key] = (self.bidder.compute, plan_with("local", spec, tb), tb)
        return Decision(got[1], got[2], rnd)

    def _own_device(self) -> DeviceModel:
        return DeviceModel(self.node_id, self.bidder.compute, self.bidder.memory_bytes)

    async def _dispatch(
        self,
        rnd: AuctionRound,
        sends: Sequence[Any],
        inbox: asyncio.Queue[am.Bid | am.AwardReply],
    ) -> None:
        await self._send_all(rnd, sends, inbox)
        if any(isinstance(s.message, am.Award) for s in sends):
            rnd.awards_sent(self.clock())

    async def _send_all(
        self,
        rnd: AuctionRound,
        sends: Sequence[Any],
        inbox: asyncio.Queue[am.Bid | am.AwardReply],
    ) -> None:
        for s in sends:
            if s.to == self.node_id:
                # Our own bidder answers without the network.
                now = self.clock()
                if isinstance(s.message, am.CallForBids):
                    inbox.put_nowait(self.bidder.bid(s.message, now))
                elif isinstance(s.message, am.Award):
                    inbox.put_nowait(self.bidder.accept(s.message, now))
                else:
                    self.bidder.release(s.message.auction_id)
                continue
            with contextlib.suppress(Exception):
                if await self.send(s.to, s.message):
                    continue
            # Unreachable: a call for bids is simply not answered (the window
            # closes); an award is not confirmed (the reply timeout re-plans).
            log.debug(
                "auction %s: could not send %s to %s",
                rnd.call.auction_id,
                type(s.message).__name__,
                s.to,
            )

    def mark_delivered(self, rnd: AuctionRound | None, peer: str) -> None:
        """The first tile reached ``peer``: its reservation becomes queued work."""
        if (
            rnd is not None
            and rnd.phase is Phase.COMMITTED
            and peer in rnd.awards
            and peer not in rnd.delivered
        ):
            rnd.mark_delivered(peer, self.clock())


def _releases(rnd: AuctionRound) -> list[Send]:
    out = [Send(p, am.Release(rnd.call.auction_id, p)) for p in sorted(rnd.awards)]
    rnd.awards.clear()
    return out


def own_bidder(
    node_id: str,
    compute: ComputeModel,
    fingerprints: Sequence[str],
    host: str = "",
    cpus: float = 0.0,
    host_cpus: float = 0.0,
) -> Bidder:
    """This node's bidder: measured compute model, served weights, an optimistic link
    (the auctioneer overrides link figures with what it measured), and the machine it
    runs on (``host``, its ``cpus`` there, the machine's ``host_cpus``)."""
    return Bidder(
        node_id,
        compute,
        LinkModel(1e9, 0.001),
        fingerprints=frozenset(fingerprints),
        host=host,
        cpus=cpus,
        host_cpus=host_cpus,
    )


__all__ = [
    "ALONE_IDLE_TTL",
    "ALONE_TTL",
    "AUCTIONED",
    "Auctioneer",
    "CachedDecider",
    "Decision",
    "StaticPlanner",
    "alone_ttl",
    "own_bidder",
]

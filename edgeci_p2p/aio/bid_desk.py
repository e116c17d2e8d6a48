"""Auction messages in and out, and the AWAS round of each request this node plans.

As a bidder this node answers calls for bids, awards and releases from its own
:class:`~edgeci_p2p.auction.bidder.Bidder`; as an auctioneer it feeds bids and award
replies to its :class:`~edgeci_p2p.aio.auctioneer.Auctioneer`, with each bid's link
figures replaced by what this node measured of that peer
(:class:`~edgeci_p2p.policy.links.PlannedLinks`). The conversion between wire and
AWAS messages is :mod:`edgeci_p2p.auction.on_wire`.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from edgeci_p2p.aio.aside import PlanningAside
from edgeci_p2p.aio.auctioneer import Auctioneer, Decision
from edgeci_p2p.aio.connection import Connection
from edgeci_p2p.aio.errors import RequestError
from edgeci_p2p.aio.mesh import Mesh, reply
from edgeci_p2p.aio.node import Node
from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.on_wire import WireAuctionMessage, from_wire, to_wire
from edgeci_p2p.auction.round import RoundConfig
from edgeci_p2p.meminfo import vm_rss
from edgeci_p2p.nn.weights import HEAD
from edgeci_p2p.planners import STRATEGIES, STRIP_RESIDENT
from edgeci_p2p.planners.head import head_peer, with_head_on
from edgeci_p2p.policy.links import PlannedLinks
from edgeci_p2p.policy.loop_share import with_compute_factor
from edgeci_p2p.wire.errors import ErrorCode

log = logging.getLogger("edgeci.peer")

PROBE_ITEM = "probe:conv:1"
"""The probe item whose bid seconds measure a peer's speed (for forwarding)."""


class BidDesk:
    """This node's side of every auction, as bidder and as auctioneer."""

    def __init__(self, node: Node, mesh: Mesh, links: PlannedLinks) -> None:
        self.node, self.mesh = node, mesh
        self.links = links
        self.auctioneer = Auctioneer(
            node.node_id,
            node.bidder,
            self._send,
            RoundConfig(window=node.config.bid_window, reply_timeout=0.5, lease=5.0),
            shared_medium=node.config.shared_medium,
            aside=(
                PlanningAside(
                    busy=self._busy,
                    patience_s=node.config.plan_patience_s,
                    changed=node.load.changed,
                )
                if node.config.plan_aside
                else None
            ),
        )
        self.auctioneer.fold = node.config.fold
        if self.auctioneer.refresh.aside is not None:
            node.disturbed = self.auctioneer.refresh.aside.disturbing
        self.last_bids: dict[str, am.Bid] = {}
        """Each peer's last bid to this node (what it holds, its memory)."""
        self.probe_s: dict[str, float] = {}
        """Each node's seconds for the conv probe item, from its last bid (speed)."""

    def _busy(self) -> bool:
        """This node serves a request or a peer's work now (background planning waits)."""
        load = self.node.load
        return bool(load.running_here or load.queued_tiles)

    # ---- messages in ------------------------------------------------------------------------

    def on_message(self, conn: Connection, msg: WireAuctionMessage) -> None:
        bidder, now = self.node.bidder, time.monotonic()
        try:
            m = from_wire(msg)
            if isinstance(m, am.CallForBids):
                bid = bidder.bid(m, now)
                # Work queued outside the ledger may overdraw the memory estimate.
                bid = dataclasses.replace(
                    bid, free_memory=max(0, bid.free_memory), rss=vm_rss() or 0
                )
                self._answer(conn, bid, msg.TYPE)
            elif isinstance(m, am.Award):
                self._answer(conn, bidder.accept(m, now), msg.TYPE)
            elif isinstance(m, am.Release):
                bidder.release(m.auction_id)
            elif isinstance(m, am.Bid):
                self.auctioneer.on_bid(m)
            else:
                self.auctioneer.on_reply(m)
        except (am.MessageError, ValueError, KeyError) as e:
            log.warning("bad %s from %s: %s", msg.TYPE, conn.peer.node_id, e)

    def _answer(self, conn: Connection, answer: am.Bid | am.AwardReply, to: str) -> None:
        """Send this node's answer to a peer's ``to`` message. An answer the wire refuses
        is this node's fault, not the peer's: said so, not as a bad message from it."""
        try:
            out = to_wire(answer)
        except (am.MessageError, ValueError) as e:
            log.error(
                "this node's answer to a %s from %s is not valid: %s", to, conn.peer.node_id, e
            )
            return
        self.node.tasks.spawn(reply(conn, out))

    async def release(self, peer: str, auction_id: str) -> None:
        """Give ``peer`` its reservation for ``auction_id`` back (a no-op there once
        that reservation became work)."""
        await self._send(peer, am.Release(auction_id, peer))

    async def _send(self, to: str, msg: am.CallForBids | am.Award | am.Release) -> bool:
        return await self.mesh.send(to, to_wire(msg))

    def measured_link(self, bid: am.Bid) -> am.Bid:
        """``bid`` with the link figures this node plans that peer with."""
        return self.links.adjust(bid, self.node.membership.members.get(bid.bidder))

    def _priced(self, bid: am.Bid, strategy: str) -> am.Bid:
        """A bid as this round sees it: link figures as measured here; its compute at
        its ``strip_factor`` where the plan keeps strips on their peers; this node's own
        also with the CPU its event loop takes in ``strategy``'s requests."""
        bid = self.measured_link(bid)
        factor = bid.strip_factor if strategy in STRIP_RESIDENT else 1.0
        if bid.bidder == self.node.node_id:
            factor *= self.node.loop_share.factor(strategy)
        return with_compute_factor(bid, factor)

    # ---- a request's round ------------------------------------------------------------------

    async def make_plan(
        self,
        request_id: str,
        model: str,
        strategy: str,
        height: int,
        width: int,
        dry_run: bool = False,
        pixels: bool = False,
    ) -> tuple[Decision, dict[str, float]]:
        """The AWAS round for one request: bids from the alive peers holding these
        weights, the plan the strategy makes from them, reservations on the winners."""
        if strategy not in STRATEGIES:
            raise RequestError(
                ErrorCode.BAD_REQUEST, f"unknown strategy {strategy!r}; one of {STRATEGIES}"
            )
        spec = self.node.store.spec(model, height, width)
        if pixels:  # the input travels as uint8: plan its slabs at a byte a value
            spec = dataclasses.replace(spec, input_itemsize=1)
        seen = self.node.wire.get((model, height, width))
        if seen is not None and seen.seen:
            spec = dataclasses.replace(spec, wire_fraction=seen.for_planning())
        t0 = time.perf_counter()
        if strategy == "local":
            decision = self.auctioneer.local_decision(spec, None)
        else:
            now = time.monotonic()
            peers = [
                m.node_id
                for m in self.node.membership.serving(model, spec.fingerprint, now)
                if m.node_id in self.mesh.conns
            ]
            decision = await self.auctioneer.run(
                request_id,
                spec,
                strategy,
                peers,
                adjust_bid=lambda b: self._priced(b, strategy),
                quiet=self.node.load.running_here <= 1 and not dry_run,
            )
            if dry_run and decision.round is not None:
                for peer in decision.round.awards:
                    if peer == self.node.node_id:
                        self.node.bidder.release(request_id)
                    else:
                        await self.release(peer, request_id)
        if not self.node.store.fits(model, [HEAD]):
            decision = self._head_elsewhere(decision, model)
        decision.spec = spec
        return decision, {"auction": time.perf_counter() - t0}

    def _head_elsewhere(self, decision: Decision, model: str) -> Decision:
        """This node cannot hold the head within its memory: a plan that keeps it here
        (a local one, or one no bidder could take it in) sends it to the fastest peer
        whose last bid said it holds the head or has room for it."""
        plan = decision.plan
        if plan.head_device is not None and plan.head_device != plan.auctioneer:
            return decision
        bids = dict(self.last_bids)
        if decision.round is not None:
            bids.update(decision.round.bids)
        fp = self.node.store.get(model).fingerprint
        now = time.monotonic()
        alive = {m.node_id for m in self.node.membership.serving(model, fp, now)}
        candidates = {
            b.bidder: (b.free_memory, b.load.get(HEAD, 0), b.duration.get(PROBE_ITEM, 1e9))
            for b in bids.values()
            if b.bidder != self.node.node_id
            and b.bidder in alive
            and b.bidder in self.mesh.conns
            and not b.declined
            and not self.node.bans.banned(b.bidder, now)
        }
        peer = head_peer(candidates)
        if peer is None:
            return decision
        decision.plan = with_head_on(plan, peer, "memory: the head does not fit here")
        return decision

    def remember_speeds(self, decision: Decision) -> None:
        """Each bidder's seconds for the probe item, for choosing where to forward."""
        if decision.round is None:
            return
        flops = {i.item_id: sum(i.flops.values()) for i in decision.round.call.items}
        for b in decision.round.bids.values():
            self.last_bids[b.bidder] = b
            member = self.node.membership.members.get(b.bidder)
            if member is not None and (b.rss or b.held):  # for `peers`
                member.rss = b.rss
                member.holds[self.node.store.model_of(decision.round.call.fingerprint)] = b.held
            probe = b.duration.get(PROBE_ITEM)
            if probe and not b.declined:
                self.probe_s[b.bidder] = probe
                member = self.node.membership.members.get(b.bidder)
                if member is not None:  # for `peers` and the fallback order
                    member.speed_gflops = flops.get(PROBE_ITEM, 0.0) / probe / 1e9
                    member.backlog_s = b.backlog

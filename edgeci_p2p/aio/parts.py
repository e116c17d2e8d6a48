"""The parts of a started peer, and which part answers which message.

:class:`Parts` builds them around one :class:`~edgeci_p2p.aio.node.Node` and routes
every message type to its owner; the few messages no single part owns (results and
errors that several awaiting parts share, gossip, cancels that both the front door
and the worker act on) are answered here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from edgeci_p2p.aio.bid_desk import BidDesk
from edgeci_p2p.aio.connection import Connection, ConnectionLost
from edgeci_p2p.aio.errors import RequestError, received_code
from edgeci_p2p.aio.forwarder import Forwarder
from edgeci_p2p.aio.front import FrontDoor
from edgeci_p2p.aio.head import RemoteHead
from edgeci_p2p.aio.heartbeat import Heartbeats
from edgeci_p2p.aio.mesh import GOSSIP_PREFIX, Mesh
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.plan_peers import PeerPlanning
from edgeci_p2p.aio.refresh import Remote
from edgeci_p2p.aio.replies import Replies
from edgeci_p2p.aio.request import RequestRunner
from edgeci_p2p.aio.router import Router
from edgeci_p2p.aio.stages import Stages
from edgeci_p2p.aio.tiles import TileDispatcher
from edgeci_p2p.aio.worker import PeerWorker
from edgeci_p2p.auction.decider import CachedDecider, Entry
from edgeci_p2p.policy.links import PlannedLinks
from edgeci_p2p.policy.plan_peer import PlanningPeer, answer_within, spare_peer, uses
from edgeci_p2p.wire import messages as wm
from edgeci_p2p.wire.errors import ErrorCode

log = logging.getLogger("edgeci.peer")

VIEW_PREFIX = "view-"
"""Request ids of ``peers`` questions this node asks a peer for the dashboard."""


class Parts:
    """The parts of one started peer, wired together."""

    def __init__(
        self,
        node: Node,
        links: PlannedLinks,
        cluster_view: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.node = node
        self.router = Router()
        self.mesh = Mesh(node, self.router)
        self.replies: Replies[wm.TileResult] = Replies()
        """Tile, strip and head results this node awaits as auctioneer."""
        self.serving = PeerWorker(node, self.mesh)
        self.desk = BidDesk(node, self.mesh, links)
        self.forwarder = Forwarder(node, self.mesh, self.desk.probe_s)
        tiles = TileDispatcher(node, self.mesh, self.replies)
        stages = Stages(node, self.mesh, self.replies, tiles, self.serving, self.desk.auctioneer)
        head = RemoteHead(node, self.mesh, self.replies)
        self.runner = RequestRunner(
            node, self.mesh, self.replies, self.desk, self.serving, stages, head
        )
        self.front = FrontDoor(
            node, self.mesh, self.desk, self.runner, self.forwarder, self.serving.settle,
            cluster_view,
        )  # fmt: skip
        self.heartbeats = Heartbeats(node, self.mesh, self.idle)
        refresh = self.desk.auctioneer.refresh
        self.planners = PeerPlanning(node, self.mesh, refresh.aside)
        if node.config.plan_on_peers:
            refresh.remote = Remote(self._plan_peer, self._plan_on)
        self.mesh.on_peer_lost.append(self.planners.peer_lost)
        node.metrics.watch(node, self.desk.auctioneer.planning)
        self._views: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self.mesh.on_peer_lost.append(self._peer_lost)
        self.mesh.on_closed.append(self.front.on_closed)
        self._route()

    def _route(self) -> None:
        on, desk = self.router.on, self.desk
        on(wm.Ping, self.heartbeats.on_ping)
        on(wm.Pong, self.heartbeats.on_pong)
        on(wm.TileRequest, self.serving.on_tile)
        on(wm.HeadJob, self.serving.on_head)
        on(wm.StripJob, self.serving.on_strip)
        on(wm.HaloRows, self.serving.on_rows)
        on(wm.Cancel, self._on_cancel)
        on(wm.TileResult, self._on_tile_result)
        for kind in (wm.CallForBids, wm.Bid, wm.Award, wm.AwardReply, wm.Release):
            on(kind, desk.on_message)  # type: ignore[arg-type]  # one handler for the five
        on(wm.InferRequest, self.front.on_infer)
        on(wm.PlanRequest, self.front.on_plan)
        on(wm.Peers, self.front.on_peers)
        on(wm.PeersResult, self._on_gossip)
        on(wm.InferResult, self.forwarder.on_result)
        on(wm.Error, self._on_error)
        on(wm.PlanJob, self.planners.on_job)
        on(wm.PlanJobResult, self.planners.on_result)

    # ---- messages more than one part acts on ------------------------------------------------

    def _plan_peer(self, decider: CachedDecider) -> str | None:
        """The peer that plans this decider's next job (``policy/plan_peer.py``)."""
        me = self.node.node_id
        tb = decider.testbed
        others = set(tb.names) - {me} if tb is not None else set()
        got = spare_peer(decider.plan, tb, others, me)
        return None if got is None else got.name

    async def _plan_on(self, peer: str, decider: CachedDecider, job: dict[str, Any]) -> Entry:
        # A pending round has the bidders of the plan at hand (CachedDecider.shape).
        tb = decider.testbed
        bidders = frozenset(tb.names if tb is not None else ()) | {self.node.node_id}
        asked = PlanningPeer(peer, uses(decider.plan, peer))
        timeout_s = answer_within(asked, self.planners.timeout_s, self.node.config.plan_patience_s)
        return await self.planners.decide(peer, job, decider.inner.spec, bidders, timeout_s)

    def _on_cancel(self, conn: Connection, msg: wm.Cancel) -> None:
        self.front.on_cancel(conn, msg)  # a client's (or forwarding peer's) request
        self.serving.on_cancel(conn, msg)  # tiles and strip jobs given to this node

    def _on_tile_result(self, conn: Connection, msg: wm.TileResult) -> None:
        if not self.replies.resolve((msg.request_id, msg.tile_id), msg):
            log.warning("tile_result for unknown tile %s/%s", msg.request_id, msg.tile_id)

    def _on_error(self, conn: Connection, msg: wm.Error) -> None:
        if msg.request_id is None and msg.code == ErrorCode.INTERNAL:
            # The other side is shutting down: an end like EOF, not a failure of ours.
            log.info("%s is shutting down: %s", conn.peer.node_id, msg.message)
            self.node.tasks.spawn(conn.close())
            return
        self.forwarder.on_error(conn, msg)
        if msg.request_id is not None:
            # Only the tiles this peer was running: the request lives on elsewhere.
            error = RequestError(received_code(msg.code), msg.message)
            self.replies.fail_request_from(msg.request_id, conn.peer.node_id, error)

    def _on_gossip(self, conn: Connection, msg: wm.PeersResult) -> None:
        if msg.request_id.startswith(GOSSIP_PREFIX):
            self.mesh.learn(msg.body.get("peers", []))
        elif msg.request_id.startswith(VIEW_PREFIX):
            fut = self._views.get(msg.request_id)
            peers = msg.body.get("peers")
            if fut is not None and not fut.done() and isinstance(peers, list):
                fut.set_result(peers)

    async def peer_view(self, node_id: str, timeout: float) -> list[dict[str, Any]] | None:
        """The cluster as peer ``node_id`` sees it (its ``peers`` answer: its own load,
        its links), or None when it does not answer within ``timeout`` seconds."""
        request_id = f"{VIEW_PREFIX}{secrets.token_hex(4)}"
        fut = self._views[request_id] = asyncio.get_running_loop().create_future()
        try:
            if not await self.mesh.send(node_id, wm.Peers(request_id)):
                return None
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self._views.pop(request_id, None)

    def _peer_lost(self, node_id: str) -> None:
        error = ConnectionLost(f"peer {node_id} went away")
        self.replies.fail_node(node_id, error)
        self.forwarder.answers.fail_node(node_id, error)

    def idle(self) -> bool:
        """No request, tile or strip of this node's in flight: a link probe measures the
        link, not queueing behind our own traffic."""
        load = self.node.load
        return not (
            load.running_here or load.queued_tiles or len(self.replies) or self.serving.strip_tasks
        )

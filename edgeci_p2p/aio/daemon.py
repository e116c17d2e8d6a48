"""The ``edgeci-peer`` daemon: composes the parts of a peer, starts and stops them.

Every connection (peer or client) runs one reader task (:mod:`.mesh`) that hands
each message to the :class:`~edgeci_p2p.aio.router.Router`, which calls the part
that owns it: heartbeats (:mod:`.heartbeat`), the peer-side worker (:mod:`.worker`),
the bid desk (:mod:`.bid_desk`), the front door for clients (:mod:`.front`), and the
table of awaited replies (:mod:`.replies`). A peer that receives an
``infer_request`` becomes its auctioneer: the request becomes a
:class:`~edgeci_p2p.aio.run.RequestRun` that :mod:`.request` carries through the
auction, the stages (:mod:`.stages`, :mod:`.tiles`) and the head (:mod:`.head`).
Tile work never runs on the event loop, so heartbeats are answered while a tile
computes. ``docs/architecture.md`` walks one request through these files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.aio.announce import announce_addresses
from edgeci_p2p.aio.auctioneer import Auctioneer, Decision, own_bidder
from edgeci_p2p.aio.config import PeerConfig, lock_state_dir
from edgeci_p2p.aio.connection import Connection, ConnectionLost
from edgeci_p2p.aio.discovery import Discovery
from edgeci_p2p.aio.errors import RequestError
from edgeci_p2p.aio.forwarder import Forwarder
from edgeci_p2p.aio.front import FrontDoor
from edgeci_p2p.aio.http import HttpFront, token_for
from edgeci_p2p.aio.mailbox import Mailbox
from edgeci_p2p.aio.node import Load, Node, Tasks
from edgeci_p2p.aio.parts import Parts
from edgeci_p2p.aio.replies import Replies
from edgeci_p2p.aio.timed import worker_pool
from edgeci_p2p.aio.tls import Listener, client_context, load_identity, server_context
from edgeci_p2p.aio.weights import UNLIMITED, drop_idle_weights, holding
from edgeci_p2p.aio.worker import PeerWorker
from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.core.cost import ComputeModel
from edgeci_p2p.core.membership import BanList, Membership
from edgeci_p2p.hostinfo import effective_quota, machine_cpus, machine_id, one_cpu
from edgeci_p2p.meminfo import memory_budget, vm_rss
from edgeci_p2p.nn.profiler import load_or_measure
from edgeci_p2p.nn.runtime import ModelStore
from edgeci_p2p.policy.links import PlannedLinks
from edgeci_p2p.wire import messages as wm
from edgeci_p2p.wire.identity import Identity

log = logging.getLogger("edgeci.peer")


class PeerDaemon:
    """One peer: start it, send it requests (or let clients connect), stop it."""

    def __init__(
        self, config: PeerConfig, node_id: str | None = None, identity: Identity | None = None
    ) -> None:
        """``identity``: this peer's key pair (default: the one in ``state_dir``, made
        there on first start, or a fresh one); the node id is made from its key.
        ``node_id`` overrides that, which only a ``--plaintext`` peer can present."""
        self.config = config
        self._lock_file: IO[str] | None = None
        if config.state_dir is not None:
            self._lock_file = lock_state_dir(config.state_dir)
        if identity is None:
            identity = load_identity(config.state_dir)
        self.identity = identity
        self.node_id: str = node_id or identity.node_id
        self.name = config.name or f"peer-{self.node_id[:6]}"
        self.membership = Membership(self.node_id)
        self.bans = BanList()
        self.links = PlannedLinks(config.link_bandwidth)
        """The link figures this node plans each peer with (measured, with hysteresis)."""
        self.worker = worker_pool(config.worker_nice)
        self.tasks = Tasks()
        self.port = config.port
        self.instance = secrets.token_hex(8)
        """Fresh for every run of a peer: two processes presenting one node id (a copied
        state directory) differ in it (``edgeci doctor``)."""
        self.cpu_quota: float | None = None
        """The cores its cgroup quota allows (or, without one, its measured share of a
        loaded CPU times its threads); None when unlimited."""
        self.profile_created = 0.0
        """When (wall clock) the compute profile it bids with was measured."""
        self.ready = asyncio.Event()
        self.node: Node | None = None
        self._parts: Parts | None = None
        self._server: Listener | None = None
        self._discovery: Discovery | None = None
        self.http: HttpFront | None = None
        """The HTTP side (metrics, API, dashboard) when ``config.http`` asks for one."""

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        torch.set_num_threads(cfg.threads)
        # Measured before any weights load: what this peer may spend on weights and work.
        budget = memory_budget(cfg.memory_limit)
        store = await loop.run_in_executor(
            self.worker,
            functools.partial(
                ModelStore,
                cfg.models,
                cfg.weights,
                budget=None if budget is None else budget.bytes,
                idle_s=cfg.weights_idle_s,
                resident=vm_rss if cfg.count_resident else None,
                fold=cfg.fold,  # fc1 laid out now, not on a first folded strip
            ),
        )
        compute, cpus = await self._measured_compute(loop)
        bidder = own_bidder(
            self.node_id,
            compute,
            list(store.fingerprints.values()),
            host=cfg.host_id or machine_id(),
            cpus=cpus,
            host_cpus=machine_cpus(),
        )
        bidder.memory_bytes = UNLIMITED if budget is None else budget.bytes
        bidder.holding = functools.partial(holding, store)
        if self.node_id != self.identity.node_id and not cfg.plaintext:
            raise ValueError("over TLS a node id is made from the identity's key: pass identity")
        node = self.node = Node(
            cfg, self.node_id, self.name, store, compute, bidder, self.worker,
            self.membership, self.bans, self.tasks, self.port, self.identity,
        )  # fmt: skip
        node.cpu_cores = cpus
        node.one_cpu = one_cpu(self.cpu_quota)
        tls = None if cfg.plaintext else (server_context(self.identity), client_context())
        parts = self._parts = Parts(node, self.links, self.cluster_view)
        parts.mesh.dial_context = None if tls is None else tls[1]
        self._server = Listener(
            parts.mesh.accept,
            None if tls is None else tls[0],
            read_timeout=cfg.read_timeout,
            max_handshakes=cfg.max_handshakes,
            spawn=self.tasks.spawn,
        )
        self.port = node.port = await self._server.start(cfg.host, cfg.port)
        if cfg.no_mdns:
            log.info("mDNS off (--no-mdns): peers only from --peer and gossip")
        elif addresses := announce_addresses(cfg, self.port):
            self._discovery = Discovery(
                self.node_id,
                self.port,
                1,
                parts.mesh.on_sighting,
                interfaces=addresses,
                announce_addresses=addresses,
            )
            await self._discovery.async_start()
        for host, port in cfg.peers:
            self.tasks.spawn(parts.mesh.dial_forever(host, port, "static"))
        self.tasks.spawn(parts.heartbeats.run())
        self.tasks.spawn(drop_idle_weights(store, self.worker))
        aside = parts.desk.auctioneer.refresh.aside
        if aside is not None:  # its start-up costs CPU: before requests, not in one
            await aside.start()
        if cfg.http is not None:
            host, port = cfg.http
            self.http = HttpFront(self, host, port, token_for(host, cfg.cluster_key))
            await self.http.start()
            log.info("%s: dashboard and /metrics on %s", self.name, self.http.url)
        self.ready.set()
        log.info(
            "%s (%s) listening on %s:%d, models %s, memory budget %s",
            self.name,
            self.node_id,
            cfg.host,
            self.port,
            ", ".join(f"{n}={f[:12]}" for n, f in store.fingerprints.items()),
            "none" if budget is None else f"{budget.bytes / 1e6:.0f} MB ({budget.source})",
        )

    async def _measured_compute(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[ComputeModel, float]:
        """The measured compute model behind every bid: `edgeci profile`'s cached result
        for this host and thread count, measured now (about 2 s) when there is none,
        scaled to the CPU quota this peer runs under; and the cores its tiles can use."""
        threads = self.config.threads
        profile, _ = await loop.run_in_executor(self.worker, load_or_measure, threads, False, None)
        compute: ComputeModel = profile.compute
        self.profile_created = profile.created
        quota = await loop.run_in_executor(self.worker, effective_quota, threads)
        self.cpu_quota = quota
        if quota is not None and quota < threads:
            # Short profiling runs fit inside one CFS period's quota: scale to the cap.
            compute = compute.scaled(quota / threads)
            log.info(
                "CPU quota %.2f cores: bids scaled to %.0f%% of the profile",
                quota,
                100 * quota / threads,
            )
        return compute, float(threads if quota is None else min(quota, threads))

    async def stop(self) -> None:
        if self.http is not None:
            with contextlib.suppress(Exception):
                await self.http.stop()
        if self._discovery is not None:
            with contextlib.suppress(Exception):
                await self._discovery.async_stop()
        if self._server is not None:
            self._server.close()
        if self._parts is not None:
            await self._parts.mesh.say_goodbye()
            self._parts.replies.fail_all(ConnectionLost("daemon shutting down"))
        for t in list(self.tasks.running):
            t.cancel()
        if self._parts is not None:
            await self._parts.mesh.close_all()
            await self._parts.desk.auctioneer.close()
        await self.tasks.cancel_all(timeout=5.0)
        self.worker.shutdown(wait=False, cancel_futures=True)
        if self._lock_file is not None:
            self._lock_file.close()

    def security_notice(self) -> str | None:
        """What this peer's connections do not protect, said at start (None: all)."""
        if self.config.plaintext:
            return "--plaintext: connections are NOT encrypted (benchmarks and diagnosis only)"
        if self.config.cluster_key is None:
            return (
                "no cluster key: connections are encrypted (TLS 1.3) but NOT authenticated: "
                f"anyone who can reach port {self.port} can join and use this cluster"
            )
        return None

    # ---- the public face ----------------------------------------------------------------------

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            raise RuntimeError(f"peer {self.name} is not started")
        return self._parts

    @property
    def started(self) -> Node:
        if self.node is None:
            raise RuntimeError(f"peer {self.name} is not started")
        return self.node

    @property
    def store(self) -> ModelStore:
        return self.started.store

    @property
    def compute(self) -> ComputeModel:
        return self.started.compute

    @compute.setter
    def compute(self, model: ComputeModel) -> None:
        """A compute model to predict this node's work with from now on (calibration
        then scales this one)."""
        self.started.compute = self.started.profiled = model

    @property
    def bidder(self) -> Bidder:
        return self.started.bidder

    @property
    def load(self) -> Load:
        return self.started.load

    @property
    def auctioneer(self) -> Auctioneer:
        return self.parts.desk.auctioneer

    @property
    def conns(self) -> dict[str, Connection]:
        return self.parts.mesh.conns

    @property
    def mailbox(self) -> Mailbox:
        return self.parts.serving.mailbox

    @property
    def serving(self) -> PeerWorker:
        """The peer side: work auctioneers gave this node."""
        return self.parts.serving

    @property
    def replies(self) -> Replies[wm.TileResult]:
        """Tile, strip and head results this node awaits as auctioneer."""
        return self.parts.replies

    @property
    def forwarder(self) -> Forwarder:
        return self.parts.forwarder

    @property
    def front(self) -> FrontDoor:
        return self.parts.front

    def measured_link(self, bid: am.Bid) -> am.Bid:
        """``bid`` with the link figures this node plans that peer with."""
        return self.links.adjust(bid, self.membership.members.get(bid.bidder))

    async def infer(self, req: wm.InferRequest) -> wm.InferResult:
        """Answer ``req`` as a client's request would be (forwarded when busy)."""
        return await self.parts.front.infer(req)

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
        """The AWAS round for one request (:meth:`BidDesk.make_plan`)."""
        return await self.parts.desk.make_plan(
            request_id, model, strategy, height, width, dry_run, pixels
        )

    async def execute(
        self,
        req: wm.InferRequest,
        decision: Decision,
        timing: dict[str, float],
        x: torch.Tensor,
        fingerprint: str,
        t_start: float,
        pixels: npt.NDArray[np.uint8] | None = None,
    ) -> wm.InferResult:
        """Run a given decision for ``req`` (no auction): what tests force plans with.
        ``pixels``: the input's exact uint8 pixels, sent instead of first-stage floats."""
        return await self.parts.runner.execute(
            req, decision, timing, x, fingerprint, t_start, pixels
        )

    def cluster_view(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        node = self.started
        me = {
            "id": self.node_id,
            "name": self.name,
            "address": f"{self.config.host}:{self.port}",
            "models": node.store.fingerprints,
            "rss_mb": round((vm_rss() or 0) / 1e6, 1),
            "weights_mb": round(node.store.weights_bytes() / 1e6, 1),
            "holds": node.store.holds(),
            "budget_mb": None if node.store.budget is None else round(node.store.budget / 1e6, 1),
            "work_mb": round(node.store.overhead / 1e6, 1),
            "speed_gflops": round(node.compute.fits["conv"].gflops, 3),
            "backlog_s": round(node.bidder.backlog(now), 4),
            "rtt_ms": 0.0,
            "last_heartbeat_s": 0.0,
            "alive": True,
            "self": True,
            "sources": [],
            "instance": self.instance,
            "threads": self.config.threads,
            "cpu_quota": self.cpu_quota,
            "profile_age_s": (
                round(time.time() - self.profile_created, 1) if self.profile_created else None
            ),
            "load": {
                "threads": self.config.threads,
                "cpu_cores": node.cpu_cores,
                "requests": node.load.requests,
                "queued": node.load.queued_tiles,
                "banned": sorted(p for p in self.bans.until if self.bans.banned(p, now)),
            },
        }
        return [me] + [m.to_dict(now) for m in self.membership.members.values()]


def run_forever(config: PeerConfig, freeze_gc: bool = True) -> None:  # pragma: no cover
    """``edgeci-peer``'s process (:func:`edgeci_p2p.aio.entry.run_forever`)."""
    from edgeci_p2p.aio.entry import run_forever as run

    run(config, freeze_gc=freeze_gc)


__all__ = ["PeerConfig", "PeerDaemon", "RequestError", "run_forever"]

"""The ``edgeci-peer`` daemon: glue between sockets, mDNS, the pure core and torch.

Every connection (peer or client) runs one reader task that turns frames into
messages through the wire session and dispatches them. A peer that receives an
``infer_request`` becomes the auctioneer for it: it calls for bids from the
alive peers that hold the same weights, builds device models from the bids,
plans with the requested strategy, streams the tiles (its own run in the worker
thread), stitches each stage, runs the head and answers. Tile work never runs on
the event loop, so heartbeats are answered while a tile computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.aio.auctioneer import AUCTIONED, Auctioneer, Decision, own_bidder
from edgeci_p2p.aio.connection import Connection, ConnectionLost, connect, handshake
from edgeci_p2p.aio.discovery import Discovery, Sighting
from edgeci_p2p.aio.strips import (
    Mailbox,
    StripJobError,
    StripOutcome,
    run_strip_job,
    strip_jobs,
)
from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.round import RoundConfig
from edgeci_p2p.core.cost import ComputeModel, Testbed
from edgeci_p2p.core.density import WireFractions
from edgeci_p2p.core.geometry import Region, Span, Trace, full_region, head_flops, trace
from edgeci_p2p.core.membership import (
    HEARTBEAT_INTERVAL,
    PROBE_BYTES,
    BanList,
    DuplicateNodeError,
    Membership,
)
from edgeci_p2p.core.plan import segments
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.hostinfo import cpu_quota_cores, measured_cpu_share
from edgeci_p2p.nn.executor import crop, stitch
from edgeci_p2p.nn.images import ImageError, decode, normalise, pixels_of, to_pixels, top_k
from edgeci_p2p.nn.models import UnknownModelError
from edgeci_p2p.nn.profiler import load_or_measure
from edgeci_p2p.nn.runtime import ModelStore, WorkError
from edgeci_p2p.wire.auth import ReplayGuard
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import (
    Award,
    AwardReply,
    Bid,
    CallForBids,
    Cancel,
    Error,
    HaloRows,
    HeadJob,
    InferRequest,
    InferResult,
    Message,
    Peers,
    PeersResult,
    Ping,
    PlanRequest,
    PlanResult,
    Pong,
    Rect,
    Release,
    StripJob,
    StripStage,
    TileRequest,
    TileResult,
    TopK,
    message_from_wire,
)
from edgeci_p2p.wire.session import DEFAULT_ZERO_SUPPRESS_BYTES, SessionConfig
from edgeci_p2p.wire.tensors import payload_nbytes

log = logging.getLogger("edgeci.peer")

STRATEGIES = ("edgeci", "edgeci-halo", "local", "modnn", "deepthings", "edgeld", "aofl")
STRIP_TILE_BASE = 1 << 24
"""Strip jobs' tile ids start here (gather tiles' ids stay far below)."""
HEAD_TILE_ID = STRIP_TILE_BASE - 1
"""The tile id of a request's head job (``Plan.head_device``)."""
STRIP_TIMEOUT = 60.0
"""Seconds a strip job without a deadline of its own may take here."""
DEFAULT_BANDWIDTH = 2e8
"""Bytes/s a link is planned with until tiles have measured it (loopback measures
120-500 MB/s effective here, serialisation and hand-offs included)."""
DEFAULT_TILE_OVERHEAD = 0.005
"""Seconds per tile round trip beyond bytes/bandwidth until measured (encoding,
socket, worker hand-off on both ends); a prior, replaced by the fitted value."""


def _code(value: int) -> ErrorCode:
    """A received error code; unknown ones (a newer peer's) count as a failed request."""
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.REQUEST_FAILED


class CancelledTile(Exception):
    """The tile's request was cancelled before the worker reached it."""


class RequestError(Exception):
    """A request that cannot be served; carries the wire code for the error reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RunStats:
    """What one request cost: per-node compute seconds, transfer seconds, bytes moved."""

    compute: dict[str, float] = field(default_factory=dict)
    transfer_s: float = 0.0
    """Round-trip time of remote tiles minus their compute time, summed."""
    bytes: int = 0
    """Tile inputs sent plus tile outputs received over the network."""
    retries: int = 0
    """Tiles given to another peer (or computed here) after their peer failed."""
    hedges: int = 0
    """Straggling tiles that got a second copy elsewhere."""


@dataclass
class PeerConfig:
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
    zero_suppression: bool = True
    """Send feature maps zero-suppressed (docs/protocol.md 5.4); receiving them works
    either way."""


def load_node_id(state_dir: Path) -> tuple[str, Any]:
    """The persistent node id in ``state_dir`` and a held lock on the directory.

    A second process on the same state dir would present the same id: refuse it.
    """
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
    path = state_dir / "node_id"
    if path.is_file():
        node_id = path.read_text().strip()
    else:
        node_id = secrets.token_hex(8)
        path.write_text(node_id + "\n")
    return node_id, lock


class PeerDaemon:
    def __init__(self, config: PeerConfig, node_id: str | None = None) -> None:
        self.config = config
        self._lock_file: Any = None
        if node_id is None:
            if config.state_dir is not None:
                node_id, self._lock_file = load_node_id(config.state_dir)
            else:
                node_id = secrets.token_hex(8)
        self.node_id = node_id
        self.name = config.name or f"peer-{node_id[:6]}"
        self.membership = Membership(node_id)
        self.conns: dict[str, Connection] = {}
        self.store: ModelStore | None = None
        self.compute: ComputeModel | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeci-tile")
        self.bidder: Bidder | None = None
        self.auctioneer: Auctioneer | None = None
        self._delivered: set[str] = set()
        """Auctions whose reservation here has become queued work (first tile arrived)."""
        self._server: asyncio.Server | None = None
        self._discovery: Discovery | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: dict[tuple[str, int], asyncio.Future[TileResult]] = {}
        self._guard = ReplayGuard()
        self._dialing: set[tuple[str, int]] = set()
        self._ping_seq = 0
        self._bans = BanList()
        self._planned_links: dict[str, tuple[float, float]] = {}
        # Zeros counted in the maps this node assembled, per (model, height, width):
        # what zero suppression leaves of each boundary's bytes, for planning.
        self._wire: dict[tuple[str, int, int], WireFractions] = {}
        self._cancelled_tiles: set[tuple[str, int]] = set()
        self._client_tasks: dict[int, set[asyncio.Task[Any]]] = {}
        self._cancelled: set[str] = set()
        self._requests = 0
        self._queued_tiles = 0
        self.mailbox = Mailbox()
        """Halo rows waiting for the strip-job stage that reads them."""
        self._strip_tasks: dict[tuple[str, int], asyncio.Task[Any]] = {}
        self._running_here = 0
        """Requests this node is answering itself (not forwarded)."""
        self._forwards: dict[str, tuple[asyncio.Future[InferResult], str]] = {}
        self._forwarded_to: dict[str, int] = {}
        """Requests in flight that this node forwarded, per peer."""
        self._answering: set[str] = set()
        """Ids of the requests this node is answering (here or through a forward)."""
        self._pixels: dict[str, np.ndarray] = {}
        """Requests answered here whose input is image pixels: sent on as uint8."""
        self._probes: dict[tuple[str, int], int] = {}
        """Link probes in flight: (node, ping seq) -> padding bytes."""
        self._probe_s: dict[str, float] = {}
        """Each node's seconds for the conv probe item, from its last bid (speed)."""
        self.port = config.port
        self.ready = asyncio.Event()

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        torch.set_num_threads(self.config.threads)
        self.store = await loop.run_in_executor(
            self.worker, ModelStore, self.config.models, self.config.weights
        )
        # The measured compute model behind every bid: `edgeci profile`'s cached result
        # for this host and thread count, measured now (about 2 s) when there is none.
        profile, _ = await loop.run_in_executor(
            self.worker, load_or_measure, self.config.threads, False, None
        )
        self.compute = profile.compute
        quota = cpu_quota_cores()
        if quota is None:
            share = await loop.run_in_executor(self.worker, measured_cpu_share)
            quota = share * self.config.threads if share < 0.85 else None
        if quota is not None and quota < self.config.threads:
            # Short profiling runs fit inside one CFS period's quota: scale to the cap.
            self.compute = self.compute.scaled(quota / self.config.threads)
            log.info(
                "CPU quota %.2f cores: bids scaled to %.0f%% of the profile",
                quota,
                100 * quota / self.config.threads,
            )
        self.bidder = own_bidder(self.node_id, self.compute, list(self.store.fingerprints.values()))
        self.auctioneer = Auctioneer(
            self.node_id,
            self.bidder,
            self._send_auction,
            RoundConfig(window=self.config.bid_window, reply_timeout=0.5, lease=5.0),
            shared_medium=self.config.shared_medium,
        )
        self._server = await asyncio.start_server(self._accept, self.config.host, self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.config.no_mdns:
            self._discovery = Discovery(
                self.node_id,
                self.port,
                1,
                self._on_sighting,
                interfaces=self.config.mdns_interfaces,
                announce_addresses=self.config.mdns_interfaces
                or ([self.config.host] if self.config.host != "0.0.0.0" else []),
            )
            await self._discovery.async_start()
        for host, port in self.config.peers:
            self._spawn(self._dial_forever(host, port, "static"))
        self._spawn(self._heartbeat())
        self.ready.set()
        log.info(
            "%s (%s) listening on %s:%d, models %s",
            self.name,
            self.node_id,
            self.config.host,
            self.port,
            ", ".join(f"{n}={f[:12]}" for n, f in self.store.fingerprints.items()),
        )

    async def stop(self) -> None:
        if self._discovery is not None:
            with contextlib.suppress(Exception):
                await self._discovery.async_stop()
        if self._server is not None:
            self._server.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost("daemon shutting down"))
        for t in list(self._tasks):
            t.cancel()
        for c in list(self.conns.values()):
            await c.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        self.worker.shutdown(wait=False, cancel_futures=True)
        if self._lock_file is not None:
            self._lock_file.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _session_config(self) -> SessionConfig:
        assert self.store is not None
        return SessionConfig(
            node_id=self.node_id,
            name=self.name,
            port=self.port,
            models=self.store.fingerprints,
            key=self.config.cluster_key,
            zero_suppress_bytes=(
                DEFAULT_ZERO_SUPPRESS_BYTES if self.config.zero_suppression else None
            ),
        )

    def _wire_nbytes(self, array: npt.NDArray[np.float32]) -> int:
        """A tensor's bytes as this node's sessions send it (a peer that sends maps
        whole is counted as if it did not: the figures are this node's view)."""
        return payload_nbytes(
            array, DEFAULT_ZERO_SUPPRESS_BYTES if self.config.zero_suppression else None
        )

    # ---- connections -------------------------------------------------------------------

    def _on_sighting(self, s: Sighting) -> None:
        self.membership.sighted(s.node_id, s.host, s.port, "mdns")
        if s.node_id not in self.conns:
            self._spawn(self._dial_once(s.host, s.port, "mdns"))

    async def _dial_once(self, host: str, port: int, source: str) -> None:
        if (host, port) in self._dialing:
            return
        self._dialing.add((host, port))
        try:
            conn = await connect(host, port, self._session_config())
        except (ConnectionLost, OSError, TimeoutError, Exception) as e:
            log.debug("dial %s:%d failed: %s", host, port, e)
            return
        finally:
            self._dialing.discard((host, port))
        await self._serve(conn, source, (host, port))

    async def _dial_forever(self, host: str, port: int, source: str) -> None:
        """Static peers: keep a connection up, retrying with backoff."""
        delay = 0.2
        while True:
            await self._dial_once(host, port, source)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # so that stop() can cancel inbound connections too
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            try:
                conn = await handshake(
                    reader,
                    writer,
                    self._session_config(),
                    replay_guard=self._guard,
                    read_timeout=self.config.read_timeout,
                )
            except Exception as e:  # a bad handshake only closes that socket
                log.info("handshake refused: %s", e)
                return
            await self._serve(conn, "inbound", None)
        except asyncio.CancelledError:
            # Shutdown: this task is the server's connection handler, the outermost
            # frame; ending quietly spares asyncio's "exception in callback" report.
            return

    async def _serve(self, conn: Connection, source: str, dialed: tuple[str, int] | None) -> None:
        peer = conn.peer
        is_peer = peer.role == "peer"
        if is_peer:
            host = dialed[0] if dialed else conn.address[0]
            try:
                self.membership.handshake(
                    peer.node_id, host, peer.port, peer.name, peer.models, time.monotonic(), source
                )
            except DuplicateNodeError as e:
                log.error("%s", e)
                await conn.send(Error(int(ErrorCode.BAD_REQUEST), str(e)))
                await conn.close()
                return
            self.conns[peer.node_id] = conn
            # Gossip: ask who it knows, so one static seed address finds the whole cluster.
            self._spawn(self._ask_peers(conn))
        try:
            while True:
                msg = await conn.recv()
                self._dispatch(conn, msg)
        except ConnectionLost as e:
            log.debug("connection to %s ended: %s", peer.node_id, e)
        finally:
            await conn.close()
            # A client that went away cancels its requests: their tiles are
            # cancelled on every peer and their reservations released.
            for task in self._client_tasks.pop(id(conn), set()):
                task.cancel()
            if is_peer and self.conns.get(peer.node_id) is conn:
                del self.conns[peer.node_id]
                self.membership.lost(peer.node_id)
                self._fail_pending(peer.node_id)

    async def _ask_peers(self, conn: Connection) -> None:
        with contextlib.suppress(ConnectionLost):
            await conn.send(Peers(f"gossip-{secrets.token_hex(4)}"))

    def _learn(self, entries: Sequence[Any]) -> None:
        for e in entries:
            if not isinstance(e, dict) or e.get("self") or e.get("id") == self.node_id:
                continue
            node_id, address = str(e.get("id", "")), str(e.get("address", ""))
            host, _, port = address.rpartition(":")
            if node_id and node_id not in self.conns and port.isdigit() and host != "0.0.0.0":
                self.membership.sighted(node_id, host, int(port), "gossip")
                self._spawn(self._dial_once(host, int(port), "gossip"))

    def _fail_pending(self, node_id: str) -> None:
        for (_, _), fut in list(self._pending.items()):
            if not fut.done() and getattr(fut, "node_id", None) == node_id:
                fut.set_exception(ConnectionLost(f"peer {node_id} went away"))
        for fwd, node in list(self._forwards.values()):
            if node == node_id and not fwd.done():
                fwd.set_exception(ConnectionLost(f"peer {node_id} went away"))

    def _dispatch(self, conn: Connection, msg: Message) -> None:
        if isinstance(msg, Ping):
            self._spawn(conn.send(Pong(msg.seq, msg.time, time.monotonic())))
        elif isinstance(msg, Pong):
            now = time.monotonic()
            pad = self._probes.pop((conn.peer.node_id, msg.seq), 0)
            if pad:
                self.membership.probed(conn.peer.node_id, now, pad, max(0.0, now - msg.echo))
                m = self.membership.members.get(conn.peer.node_id)
                if m is not None and m.probed_bandwidth is not None:
                    log.debug(
                        "link probe to %s: %.1f ms, best %.1f MB/s",
                        conn.peer.node_id,
                        (now - msg.echo) * 1e3,
                        m.probed_bandwidth / 1e6,
                    )
            else:
                self.membership.heartbeat(conn.peer.node_id, now, max(0.0, now - msg.echo))
        elif isinstance(msg, TileRequest):
            self._spawn(self._run_tile_for(conn, msg))
        elif isinstance(msg, HeadJob):
            self._spawn(self._run_head_for(conn, msg))
        elif isinstance(msg, StripJob):
            key = (msg.request_id, msg.tile_id)
            self._strip_tasks[key] = self._spawn(self._run_strip_for(conn, msg))
            self._strip_tasks[key].add_done_callback(lambda _: self._strip_tasks.pop(key, None))
        elif isinstance(msg, HaloRows):
            if not self.mailbox.put(msg):
                log.debug("halo rows for ended job %s/%d dropped", msg.request_id, msg.job_id)
        elif isinstance(msg, TileResult):
            fut = self._pending.get((msg.request_id, msg.tile_id))
            if fut is None:
                log.warning("tile_result for unknown tile %s/%s", msg.request_id, msg.tile_id)
            elif not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, CallForBids | Bid | Award | AwardReply | Release):
            self._on_auction(conn, msg)
        elif isinstance(msg, InferRequest):
            task = self._spawn(self._infer_for(conn, msg))
            tasks = self._client_tasks.setdefault(id(conn), set())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif isinstance(msg, Peers):
            self._spawn(conn.send(PeersResult(msg.request_id, {"peers": self.cluster_view()})))
        elif isinstance(msg, PeersResult):
            if msg.request_id.startswith("gossip-"):
                self._learn(msg.body.get("peers", []))
        elif isinstance(msg, PlanRequest):
            self._spawn(self._plan_for(conn, msg))
        elif isinstance(msg, InferResult):
            forwarded = self._forwards.get(msg.request_id)
            if forwarded is not None and not forwarded[0].done():
                forwarded[0].set_result(msg)
        elif isinstance(msg, Error):
            forwarded = self._forwards.get(msg.request_id or "")
            if forwarded is not None and not forwarded[0].done():
                forwarded[0].set_exception(RequestError(_code(msg.code), msg.message))
            if msg.request_id is not None:
                # Only the tiles this peer was running: the request lives on elsewhere.
                for (rid, _), fut in self._pending.items():
                    if (
                        rid == msg.request_id
                        and getattr(fut, "node_id", None) == conn.peer.node_id
                        and not fut.done()
                    ):
                        fut.set_exception(RequestError(_code(msg.code), msg.message))
        elif isinstance(msg, Cancel):
            for (rid, tid), task in list(self._strip_tasks.items()):
                if rid == msg.request_id and msg.tile_id in (None, tid):
                    task.cancel()
            if msg.tile_id is None:
                self._cancel_here(msg.request_id)
            else:  # one copy of a hedged tile lost the race (or a strip job's run failed)
                self._cancelled_tiles.add((msg.request_id, msg.tile_id))
                if len(self._cancelled_tiles) > 4096:
                    self._cancelled_tiles.pop()
        else:
            log.debug("ignoring %s from %s", msg.TYPE, conn.peer.node_id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self._ping_seq += 1
            now = time.monotonic()
            # Stale probe entries (a pong that never came) go with the round's seq.
            for key in [k for k in self._probes if k[1] < self._ping_seq - 8]:
                del self._probes[key]
            for node, conn in list(self.conns.items()):
                m = self.membership.members.get(node)
                probe = m is not None and m.probe_due(now) and self._idle()
                self._spawn(self._ping(conn, PROBE_BYTES if probe else 0))

    def _idle(self) -> bool:
        """No request, tile or strip of this node's in flight: a link probe measures the
        link, not queueing behind our own traffic."""
        return not (self._running_here or self._queued_tiles or self._pending or self._strip_tasks)

    def _settle(self) -> None:
        """Work here just ended: with nothing left in flight, no backlog is either."""
        # Strip jobs count among the queued tiles.
        if self.bidder is not None and not (self._running_here or self._queued_tiles):
            self.bidder.idle(time.monotonic())

    async def _ping(self, conn: Connection, pad: int = 0) -> None:
        if pad:
            self._probes[(conn.peer.node_id, self._ping_seq)] = pad
        with contextlib.suppress(ConnectionLost):
            await conn.send(Ping(self._ping_seq, time.monotonic(), bytes(pad) if pad else None))

    # ---- serving peers: tiles and bids ------------------------------------------------------

    async def _refused_when_full(self, conn: Connection, request_id: str) -> bool:
        """With ``max_queued_tiles`` pieces of auctioneers' work queued, a new one (tile,
        strip job or head job) gets a 'busy' error at once instead of a place in line."""
        if self._queued_tiles < self.config.max_queued_tiles:
            return False
        with contextlib.suppress(ConnectionLost):
            await conn.send(Error(int(ErrorCode.BUSY), "tile queue full", request_id))
        return True

    async def _run_tile_for(self, conn: Connection, req: TileRequest) -> None:
        assert self.store is not None and self.compute is not None
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        out = Region(Span(*req.out.rows), Span(*req.out.cols))
        slab = Region(Span(*req.slab.rows), Span(*req.slab.cols))
        if await self._refused_when_full(conn, req.request_id):
            return
        self._queue_work(req.request_id, req.model, req.input_hw, [(req.start, req.stop, out)])
        self._queued_tiles += 1
        x = req.input
        try:
            if req.pixels:
                x = normalise(req.input).numpy()
            y = await loop.run_in_executor(
                self.worker,
                self._tile_unless_cancelled,
                req.request_id,
                req.tile_id,
                req.model,
                req.fingerprint,
                tuple(req.input_hw),
                req.start,
                req.stop,
                out,
                x,
                slab,
            )
        except (WorkError, ValueError) as e:
            with contextlib.suppress(ConnectionLost):
                await conn.send(Error(int(ErrorCode.BAD_REQUEST), str(e), req.request_id))
            return
        except CancelledTile:
            return
        finally:
            self._queued_tiles -= 1
            self._settle()
        with contextlib.suppress(ConnectionLost):
            await conn.send(TileResult(req.request_id, req.tile_id, y, time.perf_counter() - t0))

    async def _run_head_for(self, conn: Connection, job: HeadJob) -> None:
        """The head of an auctioneer's request (its plan put it here): the logits back as
        a tile result, N x classes x 1 x 1."""
        assert self.store is not None
        if await self._refused_when_full(conn, job.request_id):
            return
        self._queued_tiles += 1
        t0 = time.perf_counter()
        try:
            self.store.get(job.model, job.fingerprint)
            want = self.store.spec(job.model, *job.input_hw).head.in_shape
            if tuple(job.input.shape[1:]) != want:
                raise WorkError(
                    f"head_job: the last map of {job.model} at {list(job.input_hw)} is "
                    f"{list(want)}, got {list(job.input.shape[1:])}"
                )
            hw = (int(job.input_hw[0]), int(job.input_hw[1]))
            logits = await asyncio.get_running_loop().run_in_executor(
                self.worker, self.store.head, job.model, hw, torch.from_numpy(job.input.copy())
            )
        except (WorkError, UnknownModelError, ValueError) as e:
            with contextlib.suppress(ConnectionLost):
                await conn.send(Error(int(ErrorCode.BAD_REQUEST), str(e), job.request_id))
            return
        finally:
            self._queued_tiles -= 1
            self._settle()
        out = logits.numpy().astype(np.float32).reshape(logits.shape[0], -1, 1, 1)
        with contextlib.suppress(ConnectionLost):
            await conn.send(TileResult(job.request_id, job.tile_id, out, time.perf_counter() - t0))

    async def _run_strip_for(self, conn: Connection, job: StripJob) -> None:
        """A strip job from an auctioneer: run it, answer with the last strip or an error."""
        assert self.store is not None
        if await self._refused_when_full(conn, job.request_id):
            return
        self._queued_tiles += 1
        try:
            out = await self._strip_job(job)
        except asyncio.CancelledError:
            return  # the auctioneer cancelled it (a neighbour failed); nothing is due
        except (StripJobError, WorkError, UnknownModelError, ValueError) as e:
            code = ErrorCode.BAD_REQUEST if isinstance(e, WorkError) else ErrorCode.REQUEST_FAILED
            if isinstance(e, StripJobError) and "never arrived" in str(e):
                code = ErrorCode.DEADLINE_EXCEEDED
            with contextlib.suppress(ConnectionLost):
                await conn.send(Error(int(code), f"strip job: {e}", job.request_id))
            return
        finally:
            self._queued_tiles -= 1
            self._settle()
        with contextlib.suppress(ConnectionLost):
            await conn.send(TileResult(job.request_id, job.tile_id, out.output, out.compute_s))

    async def _strip_job(self, job: StripJob) -> StripOutcome:
        """Run a strip job here (for an auctioneer, or this node's own strip)."""
        assert self.store is not None
        self.store.get(job.model, job.fingerprint)
        spec = self.store.spec(job.model, *job.input_hw)
        self._queue_work(
            job.request_id,
            job.model,
            job.input_hw,
            [
                (st.start, st.stop, Region(Span(*st.rows), Span(0, spec.shape_at(st.stop)[2])))
                for st in job.stages
            ],
        )
        if job.pixels:
            job = dataclasses.replace(job, input=normalise(job.input).numpy(), pixels=None)
        self.mailbox.claim(job.request_id, job.job_id)
        try:
            out = await run_strip_job(
                job,
                self.store,
                self.worker,
                self.mailbox,
                self._send_rows,
                job.deadline_s if job.deadline_s is not None else STRIP_TIMEOUT,
                self._wire_nbytes,
            )
            log.debug("strip job %s/%d: %s", job.request_id, job.job_id, out.describe())
            return out
        finally:
            self.mailbox.end(job.request_id, job.job_id)

    async def _send_rows(self, node: str, msg: HaloRows) -> None:
        if node == self.node_id:
            self.mailbox.put(msg)
            return
        conn = self.conns.get(node)
        if conn is None:
            raise StripJobError(f"no connection to neighbour {node}")
        try:
            await conn.send(msg)
        except ConnectionLost as e:
            raise StripJobError(f"neighbour {node} went away: {e}") from e

    def _tile_unless_cancelled(self, request_id: str, tile_id: int, *args: Any) -> Any:
        """Worker thread: skip tiles whose request (or copy) was cancelled while queued."""
        if request_id in self._cancelled or (request_id, tile_id) in self._cancelled_tiles:
            raise CancelledTile(request_id)
        assert self.store is not None
        return self.store.run_tile(*args)

    def _cancel_here(self, request_id: str) -> None:
        """A request was cancelled: drop its queued tiles and its reservation here."""
        self._cancelled.add(request_id)
        if len(self._cancelled) > 4096:
            self._cancelled.pop()
        if self.bidder is not None:
            self.bidder.release(request_id)

    def _queue_work(
        self,
        request_id: str,
        model: str,
        input_hw: tuple[int, int],
        parts: Sequence[tuple[int, int, Region]],
    ) -> None:
        """Account for a tile in this peer's backlog (what its next bids wait behind).

        The first tile of an auction turns its reservation into queued work; tiles
        without a live reservation (lapsed lease) are queued at their predicted cost.
        """
        assert self.bidder is not None and self.store is not None and self.compute is not None
        now = time.monotonic()
        if request_id in self._delivered:
            return
        if self.bidder.deliver(request_id, now) is not None:
            self._delivered.add(request_id)
            if len(self._delivered) > 4096:
                self._delivered.pop()
            return
        try:
            spec = self.store.spec(model, *input_hw)
            self.bidder.add_work(
                sum(self.compute.trace_seconds(trace(spec, a, b, out)) for a, b, out in parts),
                now,
            )
        except (WorkError, ValueError, IndexError):
            pass

    def _on_auction(self, conn: Connection, msg: Message) -> None:
        """Auction messages: as a bidder (call, award, release) or as auctioneer (bid, reply)."""
        assert self.bidder is not None and self.auctioneer is not None
        body = {k: v for k, v in msg.to_dict().items() if k != "model"}
        now = time.monotonic()
        try:
            if isinstance(msg, CallForBids):
                bid = self.bidder.bid(am.CallForBids.from_dict(body), now)
                # Work queued outside the ledger may overdraw the memory estimate.
                bid = dataclasses.replace(bid, free_memory=max(0, bid.free_memory))
                self._spawn(self._send_wire(conn, "bid", bid.to_dict()))
            elif isinstance(msg, Award):
                reply = self.bidder.accept(am.Award.from_dict(body), now)
                self._spawn(self._send_wire(conn, "award_reply", reply.to_dict()))
            elif isinstance(msg, Release):
                self.bidder.release(am.Release.from_dict(body).auction_id)
            elif isinstance(msg, Bid):
                self.auctioneer.on_bid(am.Bid.from_dict(body))
            elif isinstance(msg, AwardReply):
                self.auctioneer.on_reply(am.AwardReply.from_dict(body))
        except (am.MessageError, ValueError, KeyError) as e:
            log.warning("bad %s from %s: %s", msg.TYPE, conn.peer.node_id, e)

    async def _send_wire(self, conn: Connection, kind: str, body: dict[str, Any]) -> bool:
        try:
            await conn.send(message_from_wire({"type": kind, **body}))
        except ConnectionLost:
            return False
        return True

    async def _send_auction(self, to: str, msg: am.CallForBids | am.Award | am.Release) -> bool:
        conn = self.conns.get(to)
        if conn is None:
            return False
        kind = {am.CallForBids: "call_for_bids", am.Award: "award", am.Release: "release"}[
            type(msg)
        ]
        return await self._send_wire(conn, kind, msg.to_dict())

    def _measured_link(self, bid: am.Bid) -> am.Bid:
        """A bid's link figures replaced by what this auctioneer measured of that peer.

        With hysteresis: the figures planned with change only when a new estimate
        is more than 2x off, so measurement noise (ping RTTs flip between 2 and 4
        ms under load) does not make every request miss the decision cache.
        """
        m = self.membership.members.get(bid.bidder)
        if m is None:
            return bid
        rtt = m.rtt if m.rtt is not None else bid.rtt
        if self.config.link_bandwidth is not None:
            bw = self.config.link_bandwidth
        else:
            # The link's own rate from probes (queueing at this node's NIC, which served
            # tiles fold into their fit, is the simulator's to model), else that fit.
            bw = m.probed_bandwidth or m.bandwidth or DEFAULT_BANDWIDTH
            # The link model charges rtt/2 per transfer and a tile makes two (slab out,
            # strip back): the fitted per-tile overhead is the round trip it costs.
            # Without it, ResNet-34's many small stages planned 30% too fast and ran
            # distributed, slower than on one peer.
            rtt = max(rtt, m.overhead if m.overhead is not None else DEFAULT_TILE_OVERHEAD)
        old = self._planned_links.get(bid.bidder)
        if old is None or not (
            0.5 <= bw / old[0] <= 2.0 and 0.5 <= (rtt + 1e-3) / (old[1] + 1e-3) <= 2.0
        ):
            old = self._planned_links[bid.bidder] = (bw, rtt)
        return dataclasses.replace(bid, bandwidth=old[0], rtt=old[1])

    def cluster_view(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        assert self.store is not None and self.compute is not None
        me = {
            "id": self.node_id,
            "name": self.name,
            "address": f"{self.config.host}:{self.port}",
            "models": self.store.fingerprints,
            "speed_gflops": round(self.compute.fits["conv"].gflops, 3),
            "backlog_s": round(self.bidder.backlog(now) if self.bidder else 0.0, 4),
            "rtt_ms": 0.0,
            "last_heartbeat_s": 0.0,
            "alive": True,
            "self": True,
            "sources": [],
        }
        return [me] + [m.to_dict(now) for m in self.membership.members.values()]

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
        assert self.store is not None and self.auctioneer is not None
        if strategy not in STRATEGIES:
            raise RequestError(
                ErrorCode.BAD_REQUEST, f"unknown strategy {strategy!r}; one of {STRATEGIES}"
            )
        spec = self.store.spec(model, height, width)
        if pixels:  # the input travels as uint8: plan its slabs at a byte a value
            spec = dataclasses.replace(spec, input_itemsize=1)
        seen = self._wire.get((model, height, width))
        if seen is not None and seen.seen:
            spec = dataclasses.replace(spec, wire_fraction=seen.for_planning())
        t0 = time.perf_counter()
        if strategy == "local":
            decision = self.auctioneer.local_decision(spec, None)
        else:
            now = time.monotonic()
            peers = [
                m.node_id
                for m in self.membership.serving(model, spec.fingerprint, now)
                if m.node_id in self.conns
            ]
            decision = await self.auctioneer.run(
                request_id,
                spec,
                strategy,
                peers,
                adjust_bid=self._measured_link,
                quiet=self._running_here <= 1 and not dry_run,
            )
            if dry_run and decision.round is not None:
                for peer in decision.round.awards:
                    if peer == self.node_id:
                        self.bidder.release(request_id)  # type: ignore[union-attr]
                    else:
                        await self._send_auction(peer, am.Release(request_id, peer))
        t1 = time.perf_counter()
        return decision, {"auction": t1 - t0}

    async def _plan_for(self, conn: Connection, req: PlanRequest) -> None:
        try:
            model = str(req.body.get("model", "resnet34"))
            strategy = str(req.body.get("strategy", "edgeci"))
            h, w = (int(v) for v in req.body.get("size", (224, 224)))
            decision, timing = await self.make_plan(
                req.request_id, model, strategy, h, w, dry_run=True
            )
            body = {
                "plan": decision.plan.to_dict(),
                "text": str(decision.plan),
                "nodes": decision.nodes,
                "timing": timing,
                "testbed": decision.testbed.to_dict(),
                "left_out": decision.left_out,
            }
            await conn.send(PlanResult(req.request_id, body))
        except (RequestError, WorkError, UnknownModelError, ValueError) as e:
            code = e.code if isinstance(e, RequestError) else ErrorCode.BAD_REQUEST
            with contextlib.suppress(ConnectionLost):
                await conn.send(Error(int(code), str(e), req.request_id))

    async def _infer_for(self, conn: Connection, req: InferRequest) -> None:
        if self._requests >= self.config.max_requests:
            # Beyond capacity: say so at once rather than queue without bound.
            with contextlib.suppress(ConnectionLost):
                await conn.send(
                    Error(
                        int(ErrorCode.BUSY),
                        f"busy: {self._requests} requests in progress here; retry or "
                        "send it to another peer",
                        req.request_id,
                    )
                )
            return
        self._requests += 1
        try:
            result = await self.infer(req)
        except (RequestError, WorkError, UnknownModelError, ImageError, ValueError) as e:
            code = e.code if isinstance(e, RequestError) else ErrorCode.BAD_REQUEST
            if isinstance(e, WorkError | UnknownModelError) and "not served" in str(e):
                code = ErrorCode.UNKNOWN_MODEL
            with contextlib.suppress(ConnectionLost):
                await conn.send(Error(int(code), str(e), req.request_id))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("request %s failed", req.request_id)
            with contextlib.suppress(ConnectionLost):
                await conn.send(Error(int(ErrorCode.REQUEST_FAILED), repr(e), req.request_id))
            return
        finally:
            self._requests -= 1
        with contextlib.suppress(ConnectionLost):
            await conn.send(result)

    async def infer(self, req: InferRequest) -> InferResult:
        """Answer ``req``: here, or, when this node is busy with earlier requests and
        a peer is idler, on that peer (a stream's frames spread over the cluster without
        the entry peer planning or decoding them). A forward that fails runs here."""
        if req.request_id in self._answering:
            # Tiles, strip jobs and the input's pixels are all found by request id.
            raise RequestError(
                ErrorCode.BAD_REQUEST,
                f"request id {req.request_id!r} is already being answered here: "
                "give every request its own id",
            )
        self._answering.add(req.request_id)
        try:
            return await self._infer_once(req)
        finally:
            self._answering.discard(req.request_id)

    async def _infer_once(self, req: InferRequest) -> InferResult:
        target = self._forward_target(req)
        if target is not None:
            try:
                return await self._forward(target, req)
            except (ConnectionLost, RequestError, TimeoutError) as e:
                log.warning(
                    "request %s forwarded to %s failed (%s); running it here",
                    req.request_id,
                    target,
                    str(e) or type(e).__name__,
                )
        self._running_here += 1
        try:
            return await self._infer_here(req)
        finally:
            self._running_here -= 1
            self._settle()

    def _forward_target(self, req: InferRequest) -> str | None:
        """The peer to pass ``req`` on to, or None to run it here.

        Only client requests of our strategies, and only while this node already runs
        one: the peer (alive, same weights, not banned) whose requests in flight from
        here, times its measured seconds per conv probe, finish first, if that beats
        this node's own queue.
        """
        if req.hops > 0 or req.strategy not in AUCTIONED or self._running_here == 0:
            return None
        mine = self._probe_s.get(self.node_id)
        if mine is None or self.store is None:
            return None
        try:
            fingerprint = self.store.get(req.model).fingerprint
        except (WorkError, UnknownModelError):
            return None
        now = time.monotonic()
        best, best_t = None, (self._running_here + 1) * mine
        for m in self.membership.serving(req.model, fingerprint, now):
            probe = self._probe_s.get(m.node_id)
            if probe is None or m.node_id not in self.conns or self._bans.banned(m.node_id, now):
                continue
            t = (self._forwarded_to.get(m.node_id, 0) + 1) * probe
            if t < best_t:
                best, best_t = m.node_id, t
        return best

    async def _forward(self, node: str, req: InferRequest) -> InferResult:
        conn = self.conns.get(node)
        if conn is None:
            raise ConnectionLost(f"no connection to {node}")
        fid = f"{req.request_id}@{secrets.token_hex(4)}"
        fut: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
        self._forwards[fid] = (fut, node)
        self._forwarded_to[node] = self._forwarded_to.get(node, 0) + 1
        try:
            await conn.send(dataclasses.replace(req, request_id=fid, hops=req.hops + 1))
            res = await asyncio.wait_for(fut, self.config.forward_timeout)
        except asyncio.CancelledError:
            with contextlib.suppress(ConnectionLost):
                await conn.send(Cancel(fid))
            raise
        finally:
            self._forwards.pop(fid, None)
            self._forwarded_to[node] -= 1
        return dataclasses.replace(res, request_id=req.request_id)

    async def _infer_here(self, req: InferRequest) -> InferResult:
        assert self.store is not None
        t_start = time.perf_counter()
        loop = asyncio.get_running_loop()
        store = self.store
        lm = store.get(req.model)
        px: np.ndarray | None
        if req.image is not None:
            img = await loop.run_in_executor(None, decode, req.image)
            px = await loop.run_in_executor(None, to_pixels, img, req.size)
            x = await loop.run_in_executor(None, normalise, px)
        else:
            assert req.tensor is not None
            arr = np.asarray(req.tensor, dtype=np.float32)
            if arr.ndim != 4 or arr.shape[:2] != (1, 3):
                raise RequestError(
                    ErrorCode.BAD_REQUEST, f"tensor of shape {arr.shape}, need 1x3xHxW"
                )
            x = torch.from_numpy(arr.copy())
            # A tensor preprocessed from an image (the usual case) is sent on as its
            # pixels, a quarter of the bytes, when they normalise back to it exactly.
            px = await loop.run_in_executor(None, pixels_of, arr)
        if px is not None:
            self._pixels[req.request_id] = px
        try:
            return await self._infer_input(req, x, lm.fingerprint, t_start)
        finally:
            self._pixels.pop(req.request_id, None)

    async def _infer_input(
        self, req: InferRequest, x: torch.Tensor, fingerprint: str, t_start: float
    ) -> InferResult:
        _, _, h, w = x.shape
        if req.hops > 0:
            # Passed on by a busy peer: this frame is this node's share of the stream,
            # run whole here without another auction (and its planning) on top.
            decision, timing = await self.make_plan(req.request_id, req.model, "local", h, w)
            decision.plan = dataclasses.replace(
                decision.plan, strategy=req.strategy, notes={"decision": "forwarded: whole here"}
            )
        else:
            decision, timing = await self.make_plan(
                req.request_id,
                req.model,
                req.strategy,
                h,
                w,
                pixels=req.request_id in self._pixels,
            )
        if decision.round is not None:
            for b in decision.round.bids.values():
                probe = b.duration.get("probe:conv:1")
                if probe and not b.declined:
                    self._probe_s[b.bidder] = probe
        try:
            return await self._execute(req, decision, timing, x, fingerprint, t_start)
        except asyncio.CancelledError:
            await self._cancel_everywhere(req.request_id, decision)
            raise

    async def _cancel_everywhere(self, request_id: str, decision: Decision) -> None:
        """The client went away: cancel the request's tiles on every peer and release
        the reservations that were not used."""
        log.info("request %s cancelled by its client", request_id)
        self._cancel_here(request_id)
        for node in set(decision.nodes) - {self.node_id}:
            conn = self.conns.get(node)
            if conn is not None:
                with contextlib.suppress(ConnectionLost):
                    await conn.send(Cancel(request_id))
        for fut in [f for (rid, _), f in self._pending.items() if rid == request_id]:
            fut.cancel()

    async def _execute(
        self,
        req: InferRequest,
        decision: Decision,
        timing: dict[str, float],
        x: torch.Tensor,
        fingerprint: str,
        t_start: float,
    ) -> InferResult:
        """Run the plan stage by stage; the auctioneer keeps every slab until its tile
        is back, so a lost tile can be given to another peer or computed here."""
        assert self.store is not None and self.auctioneer is not None
        loop = asyncio.get_running_loop()
        store = self.store
        plan, nodes = decision.plan, decision.nodes
        _, _, h, w = x.shape
        if self.bidder is not None and self.bidder.deliver(req.request_id, time.monotonic()):
            self._delivered.add(req.request_id)
        spec = store.spec(req.model, h, w)
        stats = RunStats()
        cur = x
        seen = self._wire.setdefault((req.model, h, w), WireFractions(spec.n_units + 1))
        for first, last in segments(plan):
            if first == last:
                cur = await self._gather_stage(req, decision, first, cur, spec, fingerprint, stats)
            else:
                cur = await self._halo_segment(
                    req, decision, first, last, cur, spec, fingerprint, stats
                )
            if len(plan.stages) > 1 or plan.stages[0].devices != (plan.auctioneer,):
                # bit patterns, as the wire counts them (a -0.0 travels as a value)
                bits = np.ascontiguousarray(cur.numpy(), dtype=np.float32).view(np.uint32)
                seen.observe(plan.stages[last].stop, bits.size, int(np.count_nonzero(bits)))
        t_head = time.perf_counter()
        logits = await self._remote_head(req, decision, cur, spec, fingerprint, stats)
        if logits is None:
            logits = await loop.run_in_executor(self.worker, store.head, req.model, (h, w), cur)
        head_s = time.perf_counter() - t_head
        labels = store.labels(req.model)
        top = [
            TopK(i, label, p, float(logits.reshape(-1)[i]))
            for i, label, p in top_k(logits, labels, req.top_k)
        ]
        timing_out: dict[str, float | dict[str, float]] = {
            **timing,
            "compute": stats.compute,
            "transfer": stats.transfer_s,
            "bytes": float(stats.bytes),
            "retries": float(stats.retries),
            "hedges": float(stats.hedges),
            "head": head_s,
            "total": time.perf_counter() - t_start,
        }
        plan_dict = plan.to_dict()
        plan_dict["nodes"] = nodes
        plan_dict["text"] = str(plan)
        # What the plan was made from (the bid-derived cluster), for judging predictions.
        plan_dict["testbed"] = decision.testbed.to_dict()
        if decision.round is not None:
            plan_dict["backlogs"] = {n: b.backlog for n, b in decision.round.bids.items()}
        return InferResult(
            req.request_id,
            req.model,
            req.strategy,
            top,
            logits.numpy().astype(np.float32),
            timing_out,
            plan_dict,
        )

    async def _remote_head(
        self,
        req: InferRequest,
        decision: Decision,
        cur: torch.Tensor,
        spec: ModelSpec,
        fingerprint: str,
        stats: RunStats,
    ) -> torch.Tensor | None:
        """The logits from the plan's head device, or None to run the head here: when
        the plan keeps it here, or that device fails, refuses or misses its deadline
        (the map is still here, so the request loses only the time spent waiting)."""
        plan, nodes = decision.plan, decision.nodes
        if plan.head_device is None or plan.head_device == plan.auctioneer:
            return None
        node = nodes[plan.head_device]
        conn = self.conns.get(node)
        if node == self.node_id or conn is None or self._bans.banned(node, time.monotonic()):
            return None
        x = np.ascontiguousarray(cur.numpy(), dtype=np.float32)
        tb = decision.testbed
        predicted = (
            tb.link(plan.head_device).seconds(x.nbytes)
            + tb.devices[plan.head_device].compute.seconds("head", head_flops(spec))
            if node in tb.names
            else 0.0
        )
        deadline = predicted * self.config.tile_deadline_factor + self.config.tile_deadline_margin
        loop = asyncio.get_running_loop()
        key = (req.request_id, HEAD_TILE_ID)
        fut: asyncio.Future[TileResult] = loop.create_future()
        fut.node_id = node  # type: ignore[attr-defined]
        self._pending[key] = fut
        job = HeadJob(
            req.request_id,
            HEAD_TILE_ID,
            req.model,
            fingerprint,
            x,
            input_hw=(spec.input_shape[1], spec.input_shape[2]),
            deadline_s=deadline,
        )
        try:
            await conn.send(job)
            res = await asyncio.wait_for(fut, deadline)
            got = res.output.shape
            if got != (x.shape[0], spec.head.num_classes, 1, 1):
                raise RequestError(
                    ErrorCode.REQUEST_FAILED,
                    f"logits of shape {list(got)}, not {[x.shape[0], spec.head.num_classes]}",
                )
        except (ConnectionLost, RequestError, TimeoutError) as e:
            stats.retries += 1
            # Banned like a failed tile: later plans leave it out, and a decision cached
            # before the ban runs the head here instead of waiting on it again.
            seconds = self._bans.ban(node, time.monotonic())
            log.warning(
                "head of %s on %s failed (%s); running it here, %s banned for %.0f s",
                req.request_id,
                node,
                str(e) or type(e).__name__,
                node,
                seconds,
            )
            return None
        finally:
            self._pending.pop(key, None)
        self._bans.clear(node)
        stats.bytes += self._wire_nbytes(x) + self._wire_nbytes(res.output)
        stats.compute[node] = stats.compute.get(node, 0.0) + res.compute_s
        return torch.from_numpy(res.output.reshape(res.output.shape[0], -1).copy())

    async def _gather_stage(
        self,
        req: InferRequest,
        decision: Decision,
        si: int,
        cur: torch.Tensor,
        spec: ModelSpec,
        fingerprint: str,
        stats: RunStats,
    ) -> torch.Tensor:
        """One stage the star way: each part's input slab out from here, its output back."""
        assert self.auctioneer is not None
        stage, nodes = decision.plan.stages[si], decision.nodes
        _, oh, ow = spec.shape_at(stage.stop)
        _, ih, iw = spec.shape_at(stage.start)
        whole_in = full_region(ih, iw)
        jobs = []
        for part in stage.parts:
            self.auctioneer.mark_delivered(decision.round, nodes[part.device])
        for pi, part in enumerate(stage.parts):
            tile = _Tile(
                req.request_id,
                req.model,
                fingerprint,
                (spec.input_shape[1], spec.input_shape[2]),
                si * 1000 + pi,
                trace(spec, stage.start, stage.stop, part.region),
            )
            jobs.append(
                self._run_part(
                    nodes[part.device],
                    tile,
                    crop(cur, whole_in, tile.trace.need),
                    decision.testbed,
                    stats,
                )
            )
        outs = await asyncio.gather(*jobs)
        return stitch(outs, [p.region for p in stage.parts], oh, ow)

    async def _halo_segment(
        self,
        req: InferRequest,
        decision: Decision,
        first: int,
        last: int,
        cur: torch.Tensor,
        spec: ModelSpec,
        fingerprint: str,
        stats: RunStats,
    ) -> torch.Tensor:
        """Stages ``first..last`` strip-resident: one strip job per peer, halo rows
        peer to peer, the last strips back here. If any peer fails, the others are
        cancelled and the stages run again the star way from the input this node
        still holds, without the failed peer (banned, so its parts go elsewhere)."""
        assert self.auctioneer is not None
        plan, nodes = decision.plan, decision.nodes
        jobs = strip_jobs(spec, plan, first, last, nodes)
        now = time.monotonic()
        if jobs is None or any(
            nodes[d] != self.node_id and self._bans.banned(nodes[d], now) for d in jobs.stages
        ):
            return await self._gather_segment(
                req, decision, first, last, cur, spec, fingerprint, stats
            )
        _, ih, iw = spec.shape_at(plan.stages[first].start)
        whole_in = full_region(ih, iw)
        job_id = first
        tasks: dict[int, asyncio.Future[torch.Tensor]] = {}
        sent: dict[int, StripJob] = {}
        px = self._pixels.get(req.request_id) if plan.stages[first].start == 0 else None
        for d, stages in jobs.stages.items():
            node = nodes[d]
            need = jobs.first_need[d]
            if px is not None and node != self.node_id:  # a quarter of the bytes
                inp = np.ascontiguousarray(px[:, :, need.start : need.stop, :])
            else:
                inp = np.ascontiguousarray(crop(cur, whole_in, Region(need, Span(0, iw))).numpy())
            deadline = self._strip_deadline(node, spec, stages, decision.testbed, inp.nbytes)
            job = StripJob(
                req.request_id,
                job_id,
                STRIP_TILE_BASE + first * 64 + d,
                req.model,
                fingerprint,
                stages,
                inp,
                input_hw=(spec.input_shape[1], spec.input_shape[2]),
                deadline_s=deadline,
                pixels=True if inp.dtype == np.uint8 else None,
            )
            self.auctioneer.mark_delivered(decision.round, node)
            sent[d] = job
            tasks[d] = asyncio.ensure_future(
                self._own_strip(job, stats)
                if node == self.node_id
                else self._remote_strip(node, job, deadline, stats)
            )
        try:
            await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            for t in tasks.values():
                t.cancel()
            raise
        failed = [d for d, t in tasks.items() if t.done() and t.exception() is not None]
        if failed:
            for d, t in tasks.items():
                t.cancel()
                conn = self.conns.get(nodes[d])
                if nodes[d] != self.node_id and conn is not None and not t.done():
                    with contextlib.suppress(ConnectionLost):
                        await conn.send(Cancel(req.request_id, sent[d].tile_id))
            for d in failed:
                err = tasks[d].exception()
                stats.retries += 1
                if nodes[d] != self.node_id:
                    seconds = self._bans.ban(nodes[d], time.monotonic())
                    log.warning(
                        "strip job %s/%d on %s failed (%s); banned for %.0f s, rerunning "
                        "units [%d, %d) without it",
                        req.request_id,
                        job_id,
                        nodes[d],
                        str(err) or type(err).__name__,
                        seconds,
                        plan.stages[first].start,
                        plan.stages[last].stop,
                    )
            return await self._gather_segment(
                req, decision, first, last, cur, spec, fingerprint, stats
            )
        end = plan.stages[last]
        _, oh, ow = spec.shape_at(end.stop)
        outs = [tasks[p.device].result() for p in end.parts]
        return stitch(outs, [p.region for p in end.parts], oh, ow)

    async def _gather_segment(
        self,
        req: InferRequest,
        decision: Decision,
        first: int,
        last: int,
        cur: torch.Tensor,
        spec: ModelSpec,
        fingerprint: str,
        stats: RunStats,
    ) -> torch.Tensor:
        for si in range(first, last + 1):
            cur = await self._gather_stage(req, decision, si, cur, spec, fingerprint, stats)
        return cur

    def _strip_deadline(
        self,
        node: str,
        spec: ModelSpec,
        stages: Sequence[StripStage],
        testbed: Testbed,
        nbytes: int,
    ) -> float:
        """Seconds to wait for a strip job: its predicted compute and input x factor + margin."""
        model = self.compute
        link_s = 0.0
        if node in testbed.names:
            i = testbed.names.index(node)
            model = testbed.devices[i].compute
            link_s = testbed.links[i].seconds(nbytes)
        predicted = link_s
        if model is not None:
            for st in stages:
                _, _, w = spec.shape_at(st.stop)
                region = Region(Span(*st.rows), Span(0, w))
                predicted += model.trace_seconds(trace(spec, st.start, st.stop, region))
        return predicted * self.config.tile_deadline_factor + self.config.tile_deadline_margin

    async def _own_strip(self, job: StripJob, stats: RunStats) -> torch.Tensor:
        t0 = time.perf_counter()
        out = await self._strip_job(job)
        stats.compute[self.node_id] = stats.compute.get(self.node_id, 0.0) + out.compute_s
        # This node's halo rows cross its own link like any peer's.
        stats.bytes += out.halo_in + out.halo_out
        log.debug("own strip of %s done in %.3f s", job.request_id, time.perf_counter() - t0)
        return torch.from_numpy(out.output)

    async def _remote_strip(
        self, node: str, job: StripJob, deadline: float, stats: RunStats
    ) -> torch.Tensor:
        conn = self.conns.get(node)
        if conn is None:
            raise ConnectionLost(f"no connection to {node}")
        loop = asyncio.get_running_loop()
        key = (job.request_id, job.tile_id)
        fut: asyncio.Future[TileResult] = loop.create_future()
        fut.node_id = node  # type: ignore[attr-defined]
        self._pending[key] = fut
        t0 = time.perf_counter()
        try:
            await conn.send(job)
            res = await asyncio.wait_for(fut, deadline)
        finally:
            self._pending.pop(key, None)
        stats.compute[node] = stats.compute.get(node, 0.0) + res.compute_s
        stats.transfer_s += max(0.0, time.perf_counter() - t0 - res.compute_s)
        stats.bytes += self._wire_nbytes(job.input) + self._wire_nbytes(res.output)
        assert self.store is not None
        out = np.array(res.output, dtype=np.float32)
        last = job.stages[-1]
        c, _, w = self.store.spec(job.model, *job.input_hw).shape_at(last.stop)
        want = (job.input.shape[0], c, last.rows[1] - last.rows[0], w)
        if out.shape != want:
            raise RequestError(
                ErrorCode.REQUEST_FAILED,
                f"{node} returned a strip of shape {out.shape}, not {want}",
            )
        return torch.from_numpy(out)

    def _deadline(self, node: str, tile: _Tile, testbed: Testbed, nbytes: int) -> float:
        """Seconds to wait for a remote tile: its predicted time x factor + margin."""
        predicted = 0.0
        if node in testbed.names:
            i = testbed.names.index(node)
            predicted = testbed.devices[i].compute.trace_seconds(tile.trace)
            predicted += testbed.links[i].seconds(nbytes)
        elif self.compute is not None:
            predicted = self.compute.trace_seconds(tile.trace)
        return predicted * self.config.tile_deadline_factor + self.config.tile_deadline_margin

    def _fallbacks(self, first: str, model: str, fingerprint: str) -> list[str]:
        """Where a lost tile goes next: other alive, unbanned peers with the same
        weights (fastest measured compute first), then this node."""
        now = time.monotonic()
        others = [
            m
            for m in self.membership.serving(model, fingerprint, now)
            if m.node_id != first
            and m.node_id in self.conns
            and not self._bans.banned(m.node_id, now)
        ]
        others.sort(key=lambda m: -(m.speed_gflops or 0.0))
        return [*[m.node_id for m in others][: self.config.tile_retries], self.node_id]

    async def _run_part(
        self,
        node: str,
        tile: _Tile,
        slab: torch.Tensor,
        testbed: Testbed,
        stats: RunStats,
    ) -> torch.Tensor:
        """One part of a stage: on its peer, on the next one if that fails or misses its
        deadline (the failing peer is banned with backoff), or here as the last resort."""
        fallbacks = self._fallbacks(node, tile.model, tile.fingerprint)
        if node == self.node_id:
            targets = [node]
        elif self._bans.banned(node, time.monotonic()):
            targets = fallbacks  # it failed earlier in this or a recent request
            stats.retries += 1
        else:
            targets = [node, *fallbacks]
        for attempt, target in enumerate(targets):
            if target == self.node_id:
                return await self._local_tile(tile, slab, stats)
            try:
                y = await self._hedged(
                    target, targets[attempt + 1], tile, attempt, slab, testbed, stats
                )
            except (ConnectionLost, TimeoutError, RequestError) as e:
                seconds = self._bans.ban(target, time.monotonic())
                stats.retries += 1
                log.warning(
                    "tile %s/%d on %s failed (%s); banned for %.0f s, trying %s",
                    tile.request_id,
                    tile.tile_id,
                    target,
                    str(e) or type(e).__name__,
                    seconds,
                    targets[attempt + 1],
                )
                continue
            return y  # _hedged cleared the peer's ban if its own copy won
        raise AssertionError("unreachable: the last target is this node")

    def _hedge_after(self, node: str, tile: _Tile, testbed: Testbed, nbytes: int) -> float:
        """When a tile counts as straggling: its predicted time x the hedge factor."""
        full = self._deadline(node, tile, testbed, nbytes)
        predicted = (full - self.config.tile_deadline_margin) / self.config.tile_deadline_factor
        return predicted * self.config.hedge_factor + self.config.hedge_margin

    async def _hedged(
        self,
        target: str,
        backup: str,
        tile: _Tile,
        attempt: int,
        slab: torch.Tensor,
        testbed: Testbed,
        stats: RunStats,
    ) -> torch.Tensor:
        """The tile on ``target``; if it runs late, a second copy on ``backup`` (the
        next peer, or here). The first result wins; the other copy is cancelled.
        Raises what ``target`` raised when it fails before straggling."""
        first = asyncio.ensure_future(
            self._remote_tile(target, tile, attempt, slab, testbed, stats)
        )
        wait = self._hedge_after(target, tile, testbed, slab.numel() * 8)
        done, _ = await asyncio.wait({first}, timeout=wait)
        if done:
            y = first.result()
            self._bans.clear(target)
            return y
        stats.hedges += 1
        # A straggler is kept out of the request's later stages (and the next
        # auctions) like a failed peer; winning the race after all clears it.
        self._bans.ban(target, time.monotonic())
        log.info(
            "tile %s/%d straggles on %s; hedging on %s",
            tile.request_id,
            tile.tile_id,
            target,
            backup,
        )
        if backup == self.node_id:
            second = asyncio.ensure_future(self._local_tile(tile, slab, stats))
        else:
            second = asyncio.ensure_future(
                self._remote_tile(backup, tile, attempt + 4, slab, testbed, stats)
            )
        pending = {first, second}
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                if d.exception() is None:
                    if d is first:
                        self._bans.clear(target)
                    for loser in pending:
                        loser.cancel()
                    if first in pending:
                        await self._cancel_tile(target, tile, attempt)
                    elif second in pending and backup != self.node_id:
                        await self._cancel_tile(backup, tile, attempt + 4)
                    return d.result()  # type: ignore[no-any-return]
                if d is first:
                    error = d.exception()
        assert error is not None or second.exception() is not None
        raise error or second.exception()  # type: ignore[misc]

    async def _cancel_tile(self, node: str, tile: _Tile, attempt: int) -> None:
        conn = self.conns.get(node)
        if conn is not None:
            with contextlib.suppress(ConnectionLost):
                await conn.send(Cancel(tile.request_id, tile.tile_id * 8 + attempt))

    async def _remote_tile(
        self,
        node: str,
        tile: _Tile,
        attempt: int,
        slab: torch.Tensor,
        testbed: Testbed,
        stats: RunStats,
    ) -> torch.Tensor:
        conn = self.conns.get(node)
        if conn is None:
            raise ConnectionLost(f"no connection to {node}")
        loop = asyncio.get_running_loop()
        # Each attempt has its own id, so a late answer from a failed peer is ignored.
        tile_id = tile.tile_id * 8 + attempt
        key = (tile.request_id, tile_id)
        fut: asyncio.Future[TileResult] = loop.create_future()
        fut.node_id = node  # type: ignore[attr-defined]
        self._pending[key] = fut
        need, region = tile.trace.need, tile.trace.out
        px = self._pixels.get(tile.request_id) if tile.trace.start == 0 else None
        sent = (
            np.ascontiguousarray(
                px[:, :, need.rows.start : need.rows.stop, need.cols.start : need.cols.stop]
            )
            if px is not None
            else np.ascontiguousarray(slab.numpy())
        )
        t0 = time.perf_counter()
        try:
            await conn.send(
                TileRequest(
                    tile.request_id,
                    tile_id,
                    tile.model,
                    tile.fingerprint,
                    tile.trace.start,
                    tile.trace.stop,
                    Rect(
                        (region.rows.start, region.rows.stop), (region.cols.start, region.cols.stop)
                    ),
                    Rect((need.rows.start, need.rows.stop), (need.cols.start, need.cols.stop)),
                    sent,
                    input_hw=tile.input_hw,
                    pixels=True if px is not None else None,
                )
            )
            deadline = self._deadline(node, tile, testbed, slab.numel() * 8)
            res = await asyncio.wait_for(fut, deadline)
        finally:
            self._pending.pop(key, None)
        elapsed = time.perf_counter() - t0
        stats.compute[node] = stats.compute.get(node, 0.0) + res.compute_s
        moved = self._wire_nbytes(sent) + self._wire_nbytes(res.output)  # as they crossed the link
        stats.transfer_s += max(0.0, elapsed - res.compute_s)
        stats.bytes += moved
        member = self.membership.members.get(node)
        if member is not None:
            member.observe_transfer(moved, elapsed - res.compute_s)
        out = np.array(res.output, dtype=np.float32)
        want = (
            slab.shape[0],
            tile.trace.units[-1].unit.out_shape[0],
            region.rows.size,
            region.cols.size,
        )
        if out.shape != want:
            raise RequestError(
                ErrorCode.REQUEST_FAILED, f"{node} returned a tile of shape {out.shape}, not {want}"
            )
        return torch.from_numpy(out)

    async def _local_tile(self, tile: _Tile, slab: torch.Tensor, stats: RunStats) -> torch.Tensor:
        assert self.store is not None
        t0 = time.perf_counter()
        y = await asyncio.get_running_loop().run_in_executor(
            self.worker,
            self.store.run_tile,
            tile.model,
            tile.fingerprint,
            tile.input_hw,
            tile.trace.start,
            tile.trace.stop,
            tile.trace.out,
            slab.numpy(),
            tile.trace.need,
        )
        stats.compute[self.node_id] = (
            stats.compute.get(self.node_id, 0.0) + time.perf_counter() - t0
        )
        return torch.from_numpy(y)


@dataclass(frozen=True)
class _Tile:
    """One tile of a request, as the auctioneer keeps it until its result is in."""

    request_id: str
    model: str
    fingerprint: str
    input_hw: tuple[int, int]
    tile_id: int
    trace: Trace


def run_forever(config: PeerConfig) -> None:  # pragma: no cover - exercised via the CLI
    """Run a daemon until SIGINT/SIGTERM, with uvloop where available."""
    import signal

    async def main() -> None:
        daemon = PeerDaemon(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def quiet_cancel(loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
            # Connection handlers cancelled at shutdown are expected, not errors.
            if not isinstance(ctx.get("exception"), asyncio.CancelledError):
                loop.default_exception_handler(ctx)

        loop.set_exception_handler(quiet_cancel)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await daemon.start()
        print(
            f"edgeci-peer {daemon.name} ({daemon.node_id}) ready on port {daemon.port}", flush=True
        )
        await stop.wait()
        log.info("shutting down")
        await daemon.stop()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


__all__ = ["PeerConfig", "PeerDaemon", "RequestError", "os", "run_forever"]

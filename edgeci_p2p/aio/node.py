"""What the parts of one peer share: who it is, what it serves, its load, its tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from edgeci_p2p.aio.config import PeerConfig
from edgeci_p2p.aio.connection import Traffic
from edgeci_p2p.aio.metrics import Metrics
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.core.cost import ComputeModel
from edgeci_p2p.core.density import WireFractions
from edgeci_p2p.core.membership import BanList, Membership
from edgeci_p2p.core.timeline import ClockSync, Offset
from edgeci_p2p.nn.runtime import ModelStore
from edgeci_p2p.policy.calibration import (
    PieceOverhead,
    SpeedCalibration,
    own_seconds,
    strip_factor,
)
from edgeci_p2p.policy.hops import LoopHops
from edgeci_p2p.policy.loop_share import LoopShare
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.session import DEFAULT_ZERO_SUPPRESS_BYTES, SessionConfig
from edgeci_p2p.wire.tensors import payload_nbytes

log = logging.getLogger("edgeci.node")


@dataclass
class Load:
    """What this peer has in flight (the counters admission and idleness read)."""

    requests: int = 0
    """Client requests accepted here and not yet answered (``max_requests``)."""
    running_here: int = 0
    """Requests this node is answering itself (not forwarded)."""
    queued_tiles: int = 0
    """Tiles, strip jobs and head jobs accepted from auctioneers and not yet done."""
    from_memory: int = 0
    """Re-sent requests answered from the memory of recent answers (not run again)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)
    """Set when ``running_here`` or ``queued_tiles`` changes: the planning child is held
    while either is non-zero, and its feeder waits on this rather than polling
    (``aio/aside.py``)."""


class Tasks:
    """Strong references to spawned tasks (asyncio keeps only weak ones)."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.adopt(asyncio.get_running_loop().create_task(coro))

    def adopt(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task

    async def cancel_all(self, timeout: float) -> None:
        for t in list(self.running):
            t.cancel()
        if self.running:
            await asyncio.wait(list(self.running), timeout=timeout)


@dataclass
class Node:
    """One peer as its parts see it. Built by :meth:`PeerDaemon.start` once the models
    are loaded and the compute model measured."""

    config: PeerConfig
    node_id: str
    name: str
    store: ModelStore
    compute: ComputeModel
    """This node's measured compute model (bids and predictions for work here)."""
    bidder: Bidder
    worker: ThreadPoolExecutor
    """The one thread tile work runs on, so the event loop never blocks."""
    membership: Membership
    bans: BanList
    tasks: Tasks
    port: int = 0
    identity: Identity | None = None
    """This node's key pair and certificate (its node id is made from the key)."""
    load: Load = field(default_factory=Load)
    clocks: dict[str, ClockSync] = field(default_factory=dict)
    """Each peer's clock offset from heartbeat round trips (for request timelines)."""
    traffic: dict[str, Traffic] = field(default_factory=dict)
    """Bytes sent to and received from each peer, over all its connections."""
    metrics: Metrics = field(default_factory=Metrics)
    """This node's counters for ``/metrics`` and its recent requests (``aio/metrics.py``)."""
    one_cpu: float | None = None
    """The cores this daemon's threads share when at most one (a quota of 0.4, a
    single-core board): then its other threads' CPU is time its work waited
    (:func:`~edgeci_p2p.policy.calibration.own_seconds`); None: more."""
    cpu_cores: float | None = None
    """The cores tile work can use here as measured at start (quota or CPU share)."""
    wire: dict[tuple[str, int, int], WireFractions] = field(default_factory=dict)
    """Zeros counted in the maps this node assembled, per (model, height, width): what
    zero suppression leaves of each boundary's bytes, for planning."""
    calibration: SpeedCalibration = field(default_factory=SpeedCalibration)
    """The speed of this node's tiles, heads and whole models against its profile."""
    strips: SpeedCalibration = field(default_factory=lambda: SpeedCalibration(band=0.15))
    """The same for the pieces of strip jobs, kept apart (see :meth:`served`); a
    narrower band, since what it moves is the ratio of two calibrations."""
    overhead: PieceOverhead = field(default_factory=PieceOverhead)
    """The fixed seconds per piece of work, learnt beside ``calibration``."""
    hops: LoopHops = field(default_factory=LoopHops)
    """How long this node's event loop takes to pick up what its busy worker hands
    back: bids carry it as ``hop_s`` (see :meth:`picked_up`)."""
    loop_share: LoopShare = field(default_factory=LoopShare)
    """Per strategy, the CPU this node's event loop takes while it runs its own
    distributed requests; its own bid in those rounds is priced with it."""
    own_pieces: dict[str, list[float]] = field(default_factory=dict)
    """Per own request running its maps: [seconds of this node's own pieces, CPU
    seconds the daemon's other threads ran meanwhile] (:meth:`own_piece`)."""
    profiled: ComputeModel | None = None
    """The compute model as profiled at start (``compute`` is it, calibrated)."""
    disturbed: Callable[[float], bool] = lambda within_s: False
    """Whether a piece that ended now, ``within_s`` seconds long, shared the CPU with
    this daemon's own planning child
    (:meth:`edgeci_p2p.aio.aside.PlanningAside.disturbing`): not calibrated on."""

    def __post_init__(self) -> None:
        if self.profiled is None:
            self.profiled = self.compute

    def served(
        self,
        kind_flops: Iterable[tuple[str, float]],
        seconds: float,
        others_cpu_s: float = 0.0,
        strip: bool = False,
    ) -> None:
        """Work of ``kind_flops`` ((kind, FLOPs) per call) computed here in ``seconds``,
        while this process's other threads ran ``others_cpu_s`` CPU seconds: calibrate
        the compute model behind bids and predictions with how long it took.

        A piece of a strip job (``strip``) calibrates :attr:`strips` instead, which bids
        carry as their ``strip_factor``: a thin strip computed with its halo rows, among
        the neighbours' rows in and out, runs slower per FLOP than a tile. On the emulated
        cluster, one calibration fitted to both left the 0.2-core peer's strips 15-23%
        over their plan and the 0.13-core peer's tiles 25-30% under it."""
        if not self.config.calibrate_speed or self.profiled is None or self.disturbed(seconds):
            return
        seconds = own_seconds(seconds, others_cpu_s, self.one_cpu)
        work = list(kind_flops)
        predicted = sum(self.profiled.seconds(k, f) for k, f in work)
        # The fixed cost per piece first, then the speed from what is left of the piece:
        # a factor fitted to raw times would carry the fixed cost into every FLOP. Not
        # from the head: its fully connected layers are bound by memory, not FLOPs, and
        # would bend the line the convolutions lie on.
        learn = self.config.learn_piece_cost and any(k != "head" for k, _ in work)
        piece_s = self.overhead.observe(predicted, seconds) if learn else None
        left = max(seconds - self.overhead.piece_s, 0.5 * seconds)
        calibration = self.strips if strip else self.calibration
        slowdown = calibration.observe(predicted, left)
        if slowdown is None and piece_s is None:
            return
        self.compute = self.bidder.compute = self.profiled.scaled(
            1.0 / self.calibration.slowdown
        ).with_piece(self.overhead.piece_s)
        self.bidder.strip_factor = strip_factor(self.strips, self.calibration)
        log.info(
            "speed calibrated over %d windows and %d pieces of served work: %.2fx the "
            "profile's times, strips %.2fx the tiles', %.1f ms per piece",
            self.calibration.windows + self.strips.windows,
            self.overhead.pieces,
            self.calibration.slowdown,
            self.bidder.strip_factor,
            self.overhead.piece_s * 1e3,
        )

    def picked_up(self, delays: list[float]) -> None:
        """Work this node's worker did (a strip job's pieces, a tile, a head) came back
        to its loop ``delays`` seconds after the worker was done with each: what every
        halo row sent or received here, and every output sent back, waits for
        (``policy/hops.py``)."""
        if not self.config.calibrate_speed:
            return
        hop = self.hops.observe(delays)
        if hop is not None:
            self.bidder.hop_s = hop
            log.info("event loop picks up its worker's output in %.1f ms", hop * 1e3)

    def own_piece(self, request_id: str, seconds: float, others_cpu_s: float) -> None:
        """A piece of this node's own request ``request_id`` computed here in
        ``seconds``, while the daemon's other threads ran ``others_cpu_s`` CPU seconds."""
        acc = self.own_pieces.get(request_id)
        if acc is not None:
            acc[0] += seconds
            acc[1] += others_cpu_s

    def ran(self, strategy: str, loop_cpu_s: float, wall_s: float) -> None:
        """One of this node's own distributed requests of ``strategy`` computed its own
        pieces in ``wall_s`` seconds, while the daemon's other threads (its event loop,
        mostly) took ``loop_cpu_s`` CPU seconds from the same quota."""
        if not self.config.calibrate_speed:
            return
        share = self.loop_share.observe(strategy, loop_cpu_s, wall_s, self.one_cpu)
        if share is not None:
            log.info(
                "event loop's share of this node's CPU in its own %s requests: %.0f%% "
                "(its own bid there prices its compute %.2fx)",
                strategy,
                share * 100,
                self.loop_share.factor(strategy),
            )

    def offset(self, node: str) -> Offset | None:
        """``node``'s clock offset from this one (None: not measured yet); 0 for itself."""
        if node == self.node_id:
            return Offset(0.0, 0.0)
        sync = self.clocks.get(node)
        return sync.estimate if sync is not None else None

    @property
    def zero_suppress_bytes(self) -> int | None:
        return DEFAULT_ZERO_SUPPRESS_BYTES if self.config.zero_suppression else None

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            node_id=self.node_id,
            name=self.name,
            port=self.port,
            models=self.store.fingerprints,
            key=self.config.cluster_key,
            zero_suppress_bytes=self.zero_suppress_bytes,
            identity=self.identity,
            allow_peers=self.config.allow_peers,
        )

    def wire_nbytes(self, array: npt.NDArray[Any]) -> int:
        """A tensor's bytes as this node's sessions send it (a peer that sends maps
        whole is counted as if it did not: the figures are this node's view)."""
        return payload_nbytes(array, self.zero_suppress_bytes)

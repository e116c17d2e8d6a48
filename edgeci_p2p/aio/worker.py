"""The peer side: work auctioneers give this node (tiles, strip jobs, head jobs).

Admission (at most ``max_queued_tiles`` pieces queued; more get ``busy`` at once),
the run on the worker thread, the answer as a ``tile_result`` or an error reply,
cancellation (a whole request, or one copy of a hedged tile), and the backlog the
next bids wait behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edgeci_p2p.aio.connection import Connection
from edgeci_p2p.aio.errors import CancelledTile, code_of
from edgeci_p2p.aio.mailbox import Mailbox, StripJobError
from edgeci_p2p.aio.mesh import Mesh, reply
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.strips import StripOutcome, run_strip_job
from edgeci_p2p.aio.timed import timed
from edgeci_p2p.core.cost import flops_by_kind
from edgeci_p2p.core.geometry import Region, Span, head_flops, trace
from edgeci_p2p.nn.images import normalise
from edgeci_p2p.nn.runtime import WorkError
from edgeci_p2p.policy.recent import RecentSet
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import (
    Cancel,
    Error,
    HaloRows,
    HeadJob,
    StripJob,
    TileRequest,
    TileResult,
)

log = logging.getLogger("edgeci.peer")

STRIP_TIMEOUT = 60.0
"""Seconds a strip job without a deadline of its own may take here."""

Part = tuple[int, int, Region]
"""A piece of queued work: units [start, stop) producing ``region``."""


class PeerWorker:
    """Runs auctioneers' work on this node's worker thread and keeps its backlog."""

    def __init__(self, node: Node, mesh: Mesh) -> None:
        self.node, self.mesh = node, mesh
        self.mailbox = Mailbox()
        """Halo rows waiting for the strip-job stage that reads them."""
        self.strip_tasks: dict[tuple[str, int], asyncio.Task[Any]] = {}
        self.cancelled = RecentSet[str]()
        """Requests cancelled here: their queued tiles are skipped."""
        self.cancelled_tiles = RecentSet[tuple[str, int]]()
        """Single tiles cancelled (the losing copy of a hedged tile)."""
        self.delivered = RecentSet[str]()
        self._trim: asyncio.TimerHandle | None = None
        """The heap trim due once this peer has stayed idle (see :meth:`settle`)."""
        """Auctions whose reservation here has become queued work (first tile arrived)."""

    # ---- messages in ------------------------------------------------------------------------

    def on_tile(self, conn: Connection, req: TileRequest) -> None:
        self.node.tasks.spawn(self._run_tile_for(conn, req))

    def on_head(self, conn: Connection, job: HeadJob) -> None:
        self.node.tasks.spawn(self._run_head_for(conn, job))

    def on_strip(self, conn: Connection, job: StripJob) -> None:
        key = (job.request_id, job.tile_id)
        task = self.strip_tasks[key] = self.node.tasks.spawn(self._run_strip_for(conn, job))
        task.add_done_callback(lambda _: self.strip_tasks.pop(key, None))

    def on_rows(self, conn: Connection, msg: HaloRows) -> None:
        if not self.mailbox.put(msg):
            log.debug("halo rows for ended job %s/%d dropped", msg.request_id, msg.job_id)

    def on_cancel(self, conn: Connection, msg: Cancel) -> None:
        for (rid, tid), task in list(self.strip_tasks.items()):
            if rid == msg.request_id and msg.tile_id in (None, tid):
                task.cancel()
        if msg.tile_id is None:
            self.cancel_request(msg.request_id)
        else:  # one copy of a hedged tile lost the race (or a strip job's run failed)
            self.cancelled_tiles.add((msg.request_id, msg.tile_id))

    def cancel_request(self, request_id: str) -> None:
        """A request was cancelled: drop its queued tiles and its reservation here."""
        self.cancelled.add(request_id)
        self.node.bidder.release(request_id)

    # ---- the work ---------------------------------------------------------------------------

    async def _admitted(self, conn: Connection, request_id: str, kind: str) -> bool:
        """With ``max_queued_tiles`` pieces of auctioneers' work queued, a new one (tile,
        strip job or head job) gets a 'busy' error at once instead of a place in line."""
        if self.node.load.queued_tiles < self.node.config.max_queued_tiles:
            self.node.load.queued_tiles += 1
            self.node.load.changed.set()
            return True
        self.node.metrics.tile(kind, "busy")
        await reply(conn, Error(int(ErrorCode.BUSY), "tile queue full", request_id))
        return False

    def _done(self) -> None:
        self.node.load.queued_tiles -= 1
        self.node.load.changed.set()
        self.settle()

    async def _run_tile_for(self, conn: Connection, req: TileRequest) -> None:
        t0 = time.perf_counter()
        out = Region(Span(*req.out.rows), Span(*req.out.cols))
        slab = Region(Span(*req.slab.rows), Span(*req.slab.cols))
        if not await self._admitted(conn, req.request_id, "tile"):
            return
        x = req.input
        admitted = time.monotonic()
        try:
            self.queue_work(req.request_id, req.model, req.input_hw, [(req.start, req.stop, out)])
            if req.pixels:
                x = normalise(req.input).numpy()
            y, started, stopped, _ = await asyncio.get_running_loop().run_in_executor(
                self.node.worker,
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
                req.scale,
            )
            picked = time.monotonic() - stopped
        except ValueError as e:  # WorkError included
            self.node.metrics.tile("tile", "failed")
            await reply(conn, Error(int(code_of(e)), str(e), req.request_id))
            return
        except CancelledTile:
            self.node.metrics.tile("tile", "cancelled")
            return
        finally:
            self._done()
        with contextlib.suppress(ValueError, IndexError):
            spec = self.node.store.spec(req.model, *req.input_hw)
            work = trace(spec, req.start, req.stop, out)
            # Served for a peer: the CPU this event loop took meanwhile stays in the
            # time (policy/calibration.own_seconds says why).
            self.node.served(flops_by_kind(work).items(), stopped - started)
        self.node.picked_up([picked])  # before its result can go back
        self.node.metrics.tile("tile", "served")
        spans = _spans(admitted, started, stopped) if req.trace else None
        took = time.perf_counter() - t0
        await reply(conn, TileResult(req.request_id, req.tile_id, y, took, spans))

    async def _run_head_for(self, conn: Connection, job: HeadJob) -> None:
        """The head of an auctioneer's request (its plan put it here): the logits back as
        a tile result, N x classes x 1 x 1."""
        store = self.node.store
        if not await self._admitted(conn, job.request_id, "head"):
            return
        t0 = time.perf_counter()
        admitted = time.monotonic()
        # Its award (the head item, with the weights to load) becomes queued work.
        if job.request_id not in self.delivered and self.node.bidder.deliver(
            job.request_id, admitted
        ):
            self.delivered.add(job.request_id)
        try:
            store.get(job.model, job.fingerprint)
            want = store.spec(job.model, *job.input_hw).head.in_shape
            if tuple(job.input.shape[1:]) != want:
                raise WorkError(
                    f"head_job: the last map of {job.model} at {list(job.input_hw)} is "
                    f"{list(want)}, got {list(job.input.shape[1:])}"
                )
            hw = (int(job.input_hw[0]), int(job.input_hw[1]))
            logits, started, stopped, _ = await asyncio.get_running_loop().run_in_executor(
                self.node.worker,
                timed,
                store.head,
                job.model,
                hw,
                torch.from_numpy(job.input.copy()),
            )
            picked = time.monotonic() - stopped
        except ValueError as e:  # WorkError, UnknownModelError included
            self.node.metrics.tile("head", "failed")
            await reply(conn, Error(int(code_of(e)), str(e), job.request_id))
            return
        finally:
            self._done()
        flops = [("head", head_flops(store.spec(job.model, *hw)))]
        self.node.served(flops, stopped - started)  # for a peer, as a tile above
        self.node.picked_up([picked])
        self.node.metrics.tile("head", "served")
        out = logits.numpy().astype(np.float32).reshape(logits.shape[0], -1, 1, 1)
        spans = _spans(admitted, started, stopped) if job.trace else None
        took = time.perf_counter() - t0
        await reply(conn, TileResult(job.request_id, job.tile_id, out, took, spans))

    async def _run_strip_for(self, conn: Connection, job: StripJob) -> None:
        """A strip job from an auctioneer: run it, answer with the last strip or an error."""
        if not await self._admitted(conn, job.request_id, "strip"):
            return
        try:
            out = await self.strip_job(job, own=False)
        except asyncio.CancelledError:
            self.node.metrics.tile("strip", "cancelled")
            return  # the auctioneer cancelled it (a neighbour failed); nothing is due
        except (StripJobError, ValueError) as e:  # WorkError, UnknownModelError included
            self.node.metrics.tile("strip", "failed")
            code = code_of(e, ErrorCode.REQUEST_FAILED)
            await reply(conn, Error(int(code), f"strip job: {e}", job.request_id))
            return
        finally:
            self._done()
        self.node.metrics.tile("strip", "served")
        spans = out.spans if job.trace else None
        await reply(conn, TileResult(job.request_id, job.tile_id, out.output, out.compute_s, spans))

    async def strip_job(self, job: StripJob, own: bool = True) -> StripOutcome:
        """Run a strip job here: this node's own strip, or (``own`` False) one for
        another peer's request."""
        store = self.node.store
        store.get(job.model, job.fingerprint)
        spec = store.spec(job.model, *job.input_hw)
        self.queue_work(
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
                store,
                self.node.worker,
                self.mailbox,
                self._send_rows,
                job.deadline_s if job.deadline_s is not None else STRIP_TIMEOUT,
                self.node.wire_nbytes,
            )
            log.debug("strip job %s/%d: %s", job.request_id, job.job_id, out.describe())
            for unit_flops, took, others in out.pieces:
                # For a peer, the event loop's CPU stays in, as for its tiles.
                self.node.served(unit_flops, took, others if own else 0.0, strip=True)
                if own:
                    self.node.own_piece(job.request_id, took, others)
            self.node.picked_up(out.hops)
            return out
        finally:
            self.mailbox.end(job.request_id, job.job_id)

    async def _send_rows(self, node: str, msg: HaloRows) -> None:
        if node == self.node.node_id:
            self.mailbox.put(msg)
            return
        conn = self.mesh.get(node)
        if conn is None:
            raise StripJobError(f"no connection to neighbour {node}")
        if not await reply(conn, msg):
            raise StripJobError(f"neighbour {node} went away")

    def _tile_unless_cancelled(
        self, request_id: str, tile_id: int, *args: Any
    ) -> tuple[Any, float, float, float]:
        """Worker thread: skip tiles whose request (or copy) was cancelled while queued;
        else :func:`timed`'s answer."""
        if request_id in self.cancelled or (request_id, tile_id) in self.cancelled_tiles:
            raise CancelledTile(request_id)
        return timed(self.node.store.run_tile, *args)

    # ---- backlog ----------------------------------------------------------------------------

    def queue_work(
        self, request_id: str, model: str, input_hw: tuple[int, int], parts: Sequence[Part]
    ) -> None:
        """Account for work in this peer's backlog (what its next bids wait behind).

        The first tile of an auction turns its reservation into queued work; tiles
        without a live reservation (lapsed lease) are queued at their predicted cost.
        """
        now = time.monotonic()
        if request_id in self.delivered:
            return
        if self.node.bidder.deliver(request_id, now) is not None:
            self.delivered.add(request_id)
            return
        try:
            spec = self.node.store.spec(model, *input_hw)
            self.node.bidder.add_work(
                sum(self.node.compute.trace_seconds(trace(spec, a, b, out)) for a, b, out in parts),
                now,
            )
        except (ValueError, IndexError):  # WorkError included
            pass

    def deliver_own(self, request_id: str) -> None:
        """This node's own reservation for a request it runs becomes queued work."""
        if self.node.bidder.deliver(request_id, time.monotonic()):
            self.delivered.add(request_id)

    def settle(self) -> None:
        """Work here just ended: with nothing left in flight, no backlog is either."""
        load = self.node.load
        # Strip jobs count among the queued tiles.
        if not (load.running_here or load.queued_tiles):
            self.node.bidder.idle(time.monotonic())
            # Give the heap back only once the peer has stayed idle a while. Trimming at
            # every idle moment (between two stages of one request, between requests
            # of a stream) made the next tile wait behind the trim on the worker thread
            # and then fault its activations' pages back in: on the emulated cluster
            # VGG-16 ran ~10% slower, on one peer alone as well.
            if self._trim is not None:
                self._trim.cancel()
            self._trim = asyncio.get_running_loop().call_later(IDLE_TRIM_S, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim = None
        load = self.node.load
        if load.running_here or load.queued_tiles:
            return  # busy again: the next settle schedules it anew
        # On the worker thread, after anything still queued there (not once the daemon
        # has shut its worker down).
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(self.node.worker, self.node.store.settle)


IDLE_TRIM_S = 2.0
"""Seconds a peer stays idle before its heap's free pages go back to the system."""

__all__ = ["IDLE_TRIM_S", "STRIP_TIMEOUT", "PeerWorker", "timed"]


def _spans(admitted: float, started: float, stopped: float) -> list[list[Any]]:
    """A job's steps here for ``tile_result.spans``: queued, then computed."""
    return [["queue", admitted, started, "wait"], ["compute", started, stopped, "compute"]]

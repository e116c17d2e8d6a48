"""The auctioneer's tiles: each on its planned peer, on the next one if that fails or
misses its deadline, here as the last resort; a straggler hedged on another peer.

The auctioneer keeps every tile's input slab until its result is in, so a lost tile
costs time, never the request. A failing peer is banned with backoff (cleared when
it succeeds again); the order of fallbacks and every deadline are pure policy
(:mod:`edgeci_p2p.policy.fallbacks`, :mod:`edgeci_p2p.policy.deadlines`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.aio.connection import ConnectionLost
from edgeci_p2p.aio.errors import RequestError
from edgeci_p2p.aio.mesh import Mesh
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.replies import Replies
from edgeci_p2p.aio.run import RequestRun
from edgeci_p2p.aio.worker import timed
from edgeci_p2p.core.cost import flops_by_kind
from edgeci_p2p.core.geometry import Trace
from edgeci_p2p.policy.deadlines import tile_seconds
from edgeci_p2p.policy.fallbacks import fallback_order
from edgeci_p2p.policy.tile_ids import GatherTile, hedged
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import Cancel, Rect, TileRequest, TileResult

log = logging.getLogger("edgeci.peer")


@dataclass(frozen=True)
class Tile:
    """One tile of a request, as the auctioneer keeps it until its result is in."""

    id: GatherTile
    trace: Trace
    scale: npt.NDArray[np.float32] | None = None
    """The scale vectors the stage's first unit needs (made here from the gathered map)."""


class TileDispatcher:
    """Runs the tiles of gather stages, with fallbacks, retries and hedging."""

    def __init__(self, node: Node, mesh: Mesh, replies: Replies[TileResult]) -> None:
        self.node, self.mesh, self.replies = node, mesh, replies

    def _predicted(self, run: RequestRun, node: str, tile: Tile, nbytes: int) -> float:
        return tile_seconds(run.testbed, node, tile.trace, nbytes, self.node.compute)

    def _fallbacks(self, first: str, run: RequestRun) -> list[str]:
        """Where a lost tile goes next: other alive, unbanned peers with the same
        weights (fastest measured compute first), then this node."""
        now = time.monotonic()
        return fallback_order(
            first,
            self.node.membership.serving(run.model, run.fingerprint, now),
            lambda n: n in self.mesh.conns and not self.node.bans.banned(n, now),
            self.node.config.tile_retries,
            self.node.node_id,
        )

    async def run_part(
        self, run: RequestRun, node: str, tile: Tile, slab: torch.Tensor
    ) -> torch.Tensor:
        """One part of a stage: on its peer, on the next one if that fails or misses its
        deadline (the failing peer is banned with backoff), or here as the last resort."""
        me, bans, stats = self.node.node_id, self.node.bans, run.stats
        fallbacks = self._fallbacks(node, run)
        if node == me:
            targets = [node]
        elif bans.banned(node, time.monotonic()):
            targets = fallbacks  # it failed earlier in this or a recent request
            stats.retries += 1
        else:
            targets = [node, *fallbacks]
        for attempt, target in enumerate(targets):
            if target == me:
                return await self.local_tile(run, tile, slab)
            try:
                return await self._hedged(run, target, targets[attempt + 1], tile, attempt, slab)
            except (ConnectionLost, TimeoutError, RequestError) as e:
                seconds = bans.ban(target, time.monotonic())
                stats.retries += 1
                log.warning(
                    "tile %s/%d on %s failed (%s); banned for %.0f s, trying %s",
                    run.request_id,
                    tile.id.base,
                    target,
                    str(e) or type(e).__name__,
                    seconds,
                    targets[attempt + 1],
                )
        raise AssertionError("unreachable: the last target is this node")

    async def _hedged(
        self,
        run: RequestRun,
        target: str,
        backup: str,
        tile: Tile,
        attempt: int,
        slab: torch.Tensor,
    ) -> torch.Tensor:
        """The tile on ``target``; if it runs late, a second copy on ``backup`` (the
        next peer, or here). The first result wins; the other copy is cancelled.
        Raises what ``target`` raised when it fails before straggling."""
        bans = self.node.bans
        predicted = self._predicted(run, target, tile, slab.numel() * 8)
        first = asyncio.ensure_future(
            self._remote_tile(run, target, tile, attempt, slab, predicted)
        )
        done, _ = await asyncio.wait(
            {first}, timeout=self.node.config.deadlines.hedge_after(predicted)
        )
        if done:
            y = first.result()
            bans.clear(target)
            return y
        run.stats.hedges += 1
        # A straggler is kept out of the request's later stages (and the next
        # auctions) like a failed peer; winning the race after all clears it.
        bans.ban(target, time.monotonic())
        log.info(
            "tile %s/%d straggles on %s; hedging on %s",
            run.request_id,
            tile.id.base,
            target,
            backup,
        )
        if backup == self.node.node_id:
            second = asyncio.ensure_future(self.local_tile(run, tile, slab))
        else:
            second = asyncio.ensure_future(
                self._remote_tile(
                    run,
                    backup,
                    tile,
                    hedged(attempt),
                    slab,
                    self._predicted(run, backup, tile, slab.numel() * 8),
                )
            )
        pending = {first, second}
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                if d.exception() is None:
                    if d is first:
                        bans.clear(target)
                    for loser in pending:
                        loser.cancel()
                    if first in pending:
                        await self._cancel(run, target, tile, attempt)
                    elif second in pending and backup != self.node.node_id:
                        await self._cancel(run, backup, tile, hedged(attempt))
                    return d.result()
                if d is first:
                    error = d.exception()
        failed = error or second.exception()
        assert failed is not None
        raise failed

    async def _cancel(self, run: RequestRun, node: str, tile: Tile, attempt: int) -> None:
        await self.mesh.send(node, Cancel(run.request_id, tile.id.attempt(attempt)))

    async def _remote_tile(
        self,
        run: RequestRun,
        node: str,
        tile: Tile,
        attempt: int,
        slab: torch.Tensor,
        predicted: float,
    ) -> torch.Tensor:
        """``tile`` on ``node``, given up after the deadline its ``predicted`` seconds
        allow (worked out once per attempt: it walks every unit of the tile)."""
        conn = self.mesh.get(node)
        if conn is None:
            raise ConnectionLost(f"no connection to {node}")
        # Each attempt has its own id, so a late answer from a failed peer is ignored.
        tile_id = tile.id.attempt(attempt)
        need, region = tile.trace.need, tile.trace.out
        px = run.pixels if tile.trace.start == 0 else None
        sent: npt.NDArray[Any] = (
            np.ascontiguousarray(
                px[:, :, need.rows.start : need.rows.stop, need.cols.start : need.cols.stop]
            )
            if px is not None
            else np.ascontiguousarray(slab.numpy())
        )
        t0 = time.perf_counter()
        me, m0 = self.node.node_id, time.monotonic()
        run.reached.add(node)
        with self.replies.awaiting((run.request_id, tile_id), node) as fut:
            await conn.send(
                TileRequest(
                    run.request_id,
                    tile_id,
                    run.model,
                    run.fingerprint,
                    tile.trace.start,
                    tile.trace.stop,
                    Rect(
                        (region.rows.start, region.rows.stop), (region.cols.start, region.cols.stop)
                    ),
                    Rect((need.rows.start, need.rows.stop), (need.cols.start, need.cols.stop)),
                    sent,
                    input_hw=run.input_hw,
                    pixels=True if px is not None else None,
                    trace=True if run.timeline is not None else None,
                    scale=tile.scale,
                )
            )
            m1 = time.monotonic()
            res = await asyncio.wait_for(fut, self.node.config.deadlines.deadline(predicted))
        elapsed = time.perf_counter() - t0
        stage, base = tile.id.stage, tile.id.base
        run.span(me, "send", m0, m1, "send", stage, base)
        run.span(me, "wait", m1, time.monotonic(), "wait", stage, base)
        run.remote_spans(node, res.spans, self.node.offset(node), stage, base)
        stats = run.stats
        stats.computed(node, res.compute_s)
        moved = self.node.wire_nbytes(sent) + self.node.wire_nbytes(res.output)  # as they crossed
        stats.transfer_s += max(0.0, elapsed - res.compute_s)
        stats.bytes += moved
        member = self.node.membership.members.get(node)
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

    async def local_tile(self, run: RequestRun, tile: Tile, slab: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        m0 = time.monotonic()
        y, started, stopped, others = await asyncio.get_running_loop().run_in_executor(
            self.node.worker,
            timed,
            self.node.store.run_tile,
            run.model,
            run.fingerprint,
            run.input_hw,
            tile.trace.start,
            tile.trace.stop,
            tile.trace.out,
            slab.numpy(),
            tile.trace.need,
            tile.scale,
        )
        run.stats.computed(self.node.node_id, time.perf_counter() - t0)
        self.node.served(flops_by_kind(tile.trace).items(), stopped - started, others)
        self.node.own_piece(run.request_id, stopped - started, others)
        me, stage, base = self.node.node_id, tile.id.stage, tile.id.base
        run.span(me, "queue", m0, started, "wait", stage, base)
        run.span(me, "compute", started, stopped, "compute", stage, base)
        return torch.from_numpy(y)

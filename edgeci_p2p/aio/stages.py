"""The auctioneer's stages: gathered through this node, or strip-resident segments.

A gather stage sends each part's input slab out from here and stitches the parts'
outputs (:class:`~edgeci_p2p.aio.tiles.TileDispatcher` runs each part). A halo
segment (``edgeci-halo``) sends one strip job per peer; halo rows go peer to peer
and the last strips come back here. If any strip job fails, the others are
cancelled and the segment runs again the gather way from the input this node still
holds, without the failed peer (banned, so its parts go elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.aio.auctioneer import Auctioneer
from edgeci_p2p.aio.connection import ConnectionLost
from edgeci_p2p.aio.errors import RequestError
from edgeci_p2p.aio.mesh import Mesh
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.replies import Replies
from edgeci_p2p.aio.run import RequestRun
from edgeci_p2p.aio.tiles import Tile, TileDispatcher
from edgeci_p2p.aio.worker import PeerWorker
from edgeci_p2p.core.geometry import Region, Span, Trace, full_region, trace
from edgeci_p2p.core.plan import Stage
from edgeci_p2p.core.timeline import Offset
from edgeci_p2p.nn.executor import crop, stitch
from edgeci_p2p.policy.deadlines import strip_job_seconds
from edgeci_p2p.policy.strip_jobs import SegmentJobs, strip_jobs
from edgeci_p2p.policy.tile_ids import GatherTile, strip_job_id
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import Cancel, StripJob, StripStage, TileResult

log = logging.getLogger("edgeci.peer")

JOBS_KEPT = 16
"""Halo segments whose strip jobs are kept (a few plans per model and strategy)."""


class Stages:
    """Runs a plan's stages for a request: gather stages and halo segments."""

    def __init__(
        self,
        node: Node,
        mesh: Mesh,
        replies: Replies[TileResult],
        tiles: TileDispatcher,
        worker: PeerWorker,
        auctioneer: Auctioneer,
    ) -> None:
        self.node, self.mesh, self.replies = node, mesh, replies
        self.tiles, self.worker, self.auctioneer = tiles, worker, auctioneer
        self._jobs: dict[
            tuple[int, int, int], tuple[tuple[Stage, ...], list[str], SegmentJobs | None]
        ] = {}
        """The strip jobs of recent plans' halo segments (by their stages' identity)."""
        self._traces: dict[tuple[int, int], tuple[tuple[Stage, ...], list[Trace]]] = {}
        """Each part's trace of recent plans' gather stages (by their stages' identity)."""

    async def gather_stage(self, run: RequestRun, si: int, cur: torch.Tensor) -> torch.Tensor:
        """One stage the star way: each part's input slab out from here, its output back."""
        spec, stage, nodes = run.spec, run.plan.stages[si], run.nodes
        _, oh, ow = spec.shape_at(stage.stop)
        _, ih, iw = spec.shape_at(stage.start)
        whole_in = full_region(ih, iw)
        for part in stage.parts:
            self.auctioneer.mark_delivered(run.decision.round, nodes[part.device])
        me, m0 = self.node.node_id, time.monotonic()
        scale = None
        if spec.units[stage.start].needs_scale:
            # A synchronisation point: the scale vectors from the whole map, once, here.
            scale = await asyncio.get_running_loop().run_in_executor(
                self.node.worker,
                self.node.store.scales,
                run.model,
                run.input_hw,
                stage.start,
                cur.numpy(),
            )
            run.span(me, "scale", m0, time.monotonic(), "compute", si)
            m0 = time.monotonic()
        jobs: dict[int, Coroutine[Any, Any, torch.Tensor]] = {}
        traces = self._stage_traces(run, si)
        for pi, part in enumerate(stage.parts):
            tile = Tile(GatherTile(si, pi), traces[pi], scale)
            slab = crop(cur, whole_in, tile.trace.need)
            jobs[pi] = self.tiles.run_part(run, nodes[part.device], tile, slab)
        run.span(me, "cut", m0, time.monotonic(), "control", si)
        # Remote parts start first: started first, this node's own part would take the
        # worker thread, and with it the GIL for up to a switch interval (5 ms) at a
        # time, while the loop still has the other parts' slabs to encode and send.
        first = sorted(jobs, key=lambda pi: nodes[stage.parts[pi].device] == me)
        tasks = {pi: asyncio.ensure_future(jobs[pi]) for pi in first}
        try:
            outs = [await tasks[pi] for pi in range(len(stage.parts))]
        except BaseException:
            for t in tasks.values():
                t.cancel()
            raise
        m1 = time.monotonic()
        out = stitch(outs, [p.region for p in stage.parts], oh, ow)
        run.span(me, "stitch", m1, time.monotonic(), "control", si)
        return out

    async def gather_segment(
        self, run: RequestRun, first: int, last: int, cur: torch.Tensor
    ) -> torch.Tensor:
        for si in range(first, last + 1):
            cur = await self.gather_stage(run, si, cur)
        return cur

    async def halo_segment(
        self, run: RequestRun, first: int, last: int, cur: torch.Tensor
    ) -> torch.Tensor:
        """Stages ``first..last`` strip-resident: one strip job per peer, halo rows
        peer to peer, the last strips back here."""
        spec, plan, nodes, me = run.spec, run.plan, run.nodes, self.node.node_id
        m0 = time.monotonic()
        jobs = self._segment_jobs(run, first, last)
        now = time.monotonic()
        if jobs is None or any(
            nodes[d] != me and self.node.bans.banned(nodes[d], now) for d in jobs.stages
        ):
            return await self.gather_segment(run, first, last, cur)
        _, ih, iw = spec.shape_at(plan.stages[first].start)
        whole_in = full_region(ih, iw)
        job_id = first
        end = plan.stages[last]
        # fc1 folded into the last strips: each answers with its partial sums.
        fold = plan.folds_after(last)
        tasks: dict[int, asyncio.Future[torch.Tensor]] = {}
        sent: dict[int, StripJob] = {}
        px = run.pixels if plan.stages[first].start == 0 else None
        for d, stages in jobs.stages.items():
            node = nodes[d]
            need = jobs.first_need[d]
            inp: npt.NDArray[Any]
            if px is not None and node != me:  # a quarter of the bytes
                inp = np.ascontiguousarray(px[:, :, need.start : need.stop, :])
            else:
                inp = np.ascontiguousarray(crop(cur, whole_in, Region(need, Span(0, iw))).numpy())
            folds = fold and d in end.devices
            deadline = self._strip_deadline(run, node, stages, inp.nbytes, folds)
            job = StripJob(
                run.request_id,
                job_id,
                strip_job_id(first, d),
                run.model,
                run.fingerprint,
                stages,
                inp,
                input_hw=run.input_hw,
                deadline_s=deadline,
                pixels=True if inp.dtype == np.uint8 else None,
                trace=True if run.timeline is not None and node != me else None,
                fold=True if folds else None,
            )
            self.auctioneer.mark_delivered(run.decision.round, node)
            sent[d] = job
            tasks[d] = asyncio.ensure_future(
                self._own_strip(run, job)
                if node == me
                else self._remote_strip(run, node, job, deadline)
            )
        # Making the jobs (their strip tables, the input rows cut for each) is the
        # segment's "cut", as a gather stage's is: 5-15 ms here, untraced before.
        run.span(me, "cut", m0, time.monotonic(), "control", first)
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
                if nodes[d] != me and not t.done():
                    await self.mesh.send(nodes[d], Cancel(run.request_id, sent[d].tile_id))
            for d in failed:
                err = tasks[d].exception()
                run.stats.retries += 1
                if nodes[d] != me:
                    seconds = self.node.bans.ban(nodes[d], time.monotonic())
                    log.warning(
                        "strip job %s/%d on %s failed (%s); banned for %.0f s, rerunning "
                        "units [%d, %d) without it",
                        run.request_id,
                        job_id,
                        nodes[d],
                        str(err) or type(err).__name__,
                        seconds,
                        plan.stages[first].start,
                        plan.stages[last].stop,
                    )
            return await self.gather_segment(run, first, last, cur)
        _, oh, ow = spec.shape_at(end.stop)
        outs = [tasks[p.device].result() for p in end.parts]
        m1 = time.monotonic()
        if fold:
            out = torch.stack(outs).sum(0)  # in part order: the same sums every time
            run.folded = True
        else:
            out = stitch(outs, [p.region for p in end.parts], oh, ow)
        run.span(me, "stitch", m1, time.monotonic(), "control", last)
        return out

    def _stage_traces(self, run: RequestRun, si: int) -> list[Trace]:
        """Each part's trace of gather stage ``si``, once per plan: request after request
        runs one cached plan, and tracing its parts again took ~2% of the auctioneer's
        loop (``py-spy``, thirty-third session). Keyed as :meth:`_segment_jobs` is."""
        stages = run.plan.stages
        hit = self._traces.get((id(stages), si))
        if hit is not None and hit[0] is stages:
            return hit[1]
        st = stages[si]
        traces = [trace(run.spec, st.start, st.stop, p.region) for p in st.parts]
        if len(self._traces) >= JOBS_KEPT * 4:  # a few plans' stages
            del self._traces[next(iter(self._traces))]
        self._traces[(id(stages), si)] = (stages, traces)
        return traces

    def _segment_jobs(self, run: RequestRun, first: int, last: int) -> SegmentJobs | None:
        """:func:`strip_jobs` of the plan's segment, once per plan: a cached decision
        hands one plan to request after request, and tracing every strip again cost
        ~2 ms of CPU (5 ms on the emulated 0.4-core auctioneer) before any job left.

        Keyed by the plan's stages, which is all the jobs are made of: a plan answered
        for moved bids is the remembered one priced anew (``dataclasses.replace`` of
        its prediction), a new object with the same stages, request after request. Keyed
        by the plan itself, every such request missed."""
        stages = run.plan.stages
        key = (id(stages), first, last)
        hit = self._jobs.get(key)
        if hit is not None and hit[0] is stages and hit[1] == run.nodes:
            return hit[2]
        jobs = strip_jobs(run.spec, run.plan, first, last, run.nodes)
        if len(self._jobs) >= JOBS_KEPT:
            del self._jobs[next(iter(self._jobs))]
        self._jobs[key] = (stages, list(run.nodes), jobs)
        return jobs

    def _strip_deadline(
        self,
        run: RequestRun,
        node: str,
        stages: Sequence[StripStage],
        nbytes: int,
        fold: bool = False,
    ) -> float:
        """Seconds to wait for a strip job: its predicted compute and input x factor + margin."""
        rows = [(st.start, st.stop, (st.rows[0], st.rows[1])) for st in stages]
        predicted = strip_job_seconds(
            run.testbed, node, run.spec, rows, nbytes, self.node.compute, fold
        )
        return self.node.config.deadlines.deadline(predicted)

    async def _own_strip(self, run: RequestRun, job: StripJob) -> torch.Tensor:
        t0 = time.perf_counter()
        out = await self.worker.strip_job(job)
        run.remote_spans(self.node.node_id, out.spans, Offset(0.0, 0.0), job.job_id, job.tile_id)
        run.stats.computed(self.node.node_id, out.compute_s)
        # This node's halo rows cross its own link like any peer's.
        run.stats.bytes += out.halo_in + out.halo_out
        log.debug("own strip of %s done in %.3f s", job.request_id, time.perf_counter() - t0)
        return torch.from_numpy(out.output)

    async def _remote_strip(
        self, run: RequestRun, node: str, job: StripJob, deadline: float
    ) -> torch.Tensor:
        conn = self.mesh.get(node)
        if conn is None:
            raise ConnectionLost(f"no connection to {node}")
        t0 = time.perf_counter()
        me, m0 = self.node.node_id, time.monotonic()
        run.reached.add(node)
        with self.replies.awaiting((job.request_id, job.tile_id), node) as fut:
            await conn.send(job)
            m1 = time.monotonic()
            res = await asyncio.wait_for(fut, deadline)
        run.span(me, "send", m0, m1, "send", job.job_id, job.tile_id)
        run.span(me, "wait", m1, time.monotonic(), "wait", job.job_id, job.tile_id)
        run.remote_spans(node, res.spans, self.node.offset(node), job.job_id, job.tile_id)
        run.stats.computed(node, res.compute_s)
        run.stats.transfer_s += max(0.0, time.perf_counter() - t0 - res.compute_s)
        run.stats.bytes += self.node.wire_nbytes(job.input) + self.node.wire_nbytes(res.output)
        out = np.array(res.output, dtype=np.float32)
        last = job.stages[-1]
        c, _, w = run.spec.shape_at(last.stop)
        want = (job.input.shape[0], c, last.rows[1] - last.rows[0], w)
        if job.fold:
            want = (job.input.shape[0], run.spec.head.linear[0][1], 1, 1)
        if out.shape != want:
            raise RequestError(
                ErrorCode.REQUEST_FAILED,
                f"{node} returned a strip of shape {out.shape}, not {want}",
            )
        return torch.from_numpy(out)

"""Answering a request here: decode its input, hold its auction, run its plan stage by
stage, its head, and build the answer. One :class:`~edgeci_p2p.aio.run.RequestRun`
per request carries its state through the collaborators."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.aio.auctioneer import Decision
from edgeci_p2p.aio.bid_desk import BidDesk
from edgeci_p2p.aio.errors import RequestError
from edgeci_p2p.aio.head import RemoteHead
from edgeci_p2p.aio.mesh import Mesh
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.replies import Replies
from edgeci_p2p.aio.run import RequestRun
from edgeci_p2p.aio.stages import Stages
from edgeci_p2p.aio.worker import PeerWorker, timed
from edgeci_p2p.core.density import WireFractions
from edgeci_p2p.core.geometry import fold_flops, head_flops
from edgeci_p2p.core.plan import segments
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.timeline import Timeline
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.images import decode, input_hw, normalise, pixels_of, to_pixels, top_k
from edgeci_p2p.nn.weights import HEAD
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import Cancel, InferRequest, InferResult, TileResult, TopK

log = logging.getLogger("edgeci.peer")


class RequestRunner:
    """Runs requests this node answers itself."""

    def __init__(
        self,
        node: Node,
        mesh: Mesh,
        replies: Replies[TileResult],
        desk: BidDesk,
        worker: PeerWorker,
        stages: Stages,
        head: RemoteHead,
    ) -> None:
        self.node, self.mesh, self.replies, self.desk = node, mesh, replies, desk
        self.worker, self.stages, self.head = worker, stages, head

    async def answer(self, req: InferRequest) -> InferResult:
        """Decode the input, plan (an auction, or whole here for a forwarded request),
        run the plan; a cancelled request is cancelled on every peer."""
        t_start = time.perf_counter()
        m0 = time.monotonic()
        timeline = Timeline(m0) if req.trace else None
        me = self.node.node_id
        fingerprint = self.node.store.get(req.model).fingerprint
        hw = input_hw(req.image, req.size) if req.image is not None and req.hops == 0 else None
        if hw is not None:
            # The auction needs only the input's size, which the image's header gives:
            # it runs while the image decodes off the loop. Decoding is ~10 ms of a slow
            # entry peer, the auction a round trip to every bidder (~12 ms under 10 ms
            # CFS periods); side by side they cost the longer of the two. A tensor is
            # made ready first: its few ms of numpy beside the auction cost more than
            # they saved. The thread holding the GIL delays each of the loop's steps of
            # the round (the switch interval is 5 ms) in the same quota: on the emulated
            # cluster its auctions took 28-31 ms that way against 11-12 ms after it.
            decoding = asyncio.ensure_future(self._timed_input(req))
            try:
                decision, timing = await self._plan(req, *hw, pixels=True)
            except BaseException:
                decoding.cancel()
                raise
            m1 = time.monotonic()
            try:
                x, px, decoded = await decoding
            except BaseException:
                # The plan was made for an input that failed to decode.
                await self._cancel_on(req.request_id, decision.nodes)
                raise
            if timeline is not None:
                timeline.add(me, "auction", m0, m1, "control")
                # Its own end, not when it was awaited: the critical path then counts
                # the auction where it was the longer of the two.
                timeline.add(me, "decode", m0, decoded, "compute")
        else:
            x, px = await self._input(req)
            m1 = time.monotonic()
            _, _, h, w = x.shape
            decision, timing = await self._plan(req, h, w, pixels=px is not None)
            if timeline is not None:
                timeline.add(me, "decode", m0, m1, "compute")
                timeline.add(me, "auction", m1, time.monotonic(), "control")
        self.desk.remember_speeds(decision)
        return await self.execute(req, decision, timing, x, fingerprint, t_start, px, timeline)

    async def _plan(
        self, req: InferRequest, h: int, w: int, pixels: bool
    ) -> tuple[Decision, dict[str, float]]:
        if req.hops > 0:
            # Passed on by a busy peer: this frame is this node's share of the stream,
            # run whole here without another auction (and its planning) on top.
            decision, timing = await self.desk.make_plan(req.request_id, req.model, "local", h, w)
            decision.plan = dataclasses.replace(
                decision.plan, strategy=req.strategy, notes={"decision": "forwarded: whole here"}
            )
            return decision, timing
        return await self.desk.make_plan(
            req.request_id, req.model, req.strategy, h, w, pixels=pixels
        )

    async def _cancel_on(self, request_id: str, nodes: Iterable[str]) -> None:
        """Cancel the request's tiles here and on ``nodes``, which release the
        reservations it did not use."""
        self.worker.cancel_request(request_id)
        for node in set(nodes) - {self.node.node_id}:
            await self.mesh.send(node, Cancel(request_id))
        self.replies.cancel_request(request_id)

    async def execute(
        self,
        req: InferRequest,
        decision: Decision,
        timing: dict[str, float],
        x: torch.Tensor,
        fingerprint: str,
        t_start: float,
        pixels: npt.NDArray[np.uint8] | None = None,
        timeline: Timeline | None = None,
    ) -> InferResult:
        """Run ``decision`` for ``req``; a cancelled request is cancelled on every peer.
        A traced request (``req.trace``) records its spans on ``timeline`` (a new one
        from now when None)."""
        _, _, h, w = x.shape
        spec = self.node.store.spec(req.model, h, w)
        if req.trace and timeline is None:
            timeline = Timeline(time.monotonic())
        run = RequestRun(req, decision, timing, spec, fingerprint, x, pixels, t_start)
        run.timeline = timeline
        try:
            return await self._execute(run)
        except asyncio.CancelledError:
            await self._cancel_everywhere(run)
            raise
        finally:
            self._release_unreached(run)

    def _release_unreached(self, run: RequestRun) -> None:
        """Awarded peers this request sent no tile or strip job give back what they
        reserved. Their parts went elsewhere: banned after a straggling or failed tile
        (in this request or another), or a failed segment rerun without them. Left
        held, a reservation stays in that peer's ledger until its next bid, and its
        bids wait behind work that never comes."""
        rnd = run.decision.round
        if rnd is None:
            return
        for peer in sorted(set(rnd.awards) - run.reached - {self.node.node_id}):
            self.node.tasks.spawn(self.desk.release(peer, run.request_id))

    async def _timed_input(
        self, req: InferRequest
    ) -> tuple[torch.Tensor, npt.NDArray[np.uint8] | None, float]:
        """:meth:`_input`, and when it was done (``time.monotonic``)."""
        x, px = await self._input(req)
        return x, px, time.monotonic()

    async def _input(self, req: InferRequest) -> tuple[torch.Tensor, npt.NDArray[np.uint8] | None]:
        """The normalised input and, when it has exact ones, its uint8 pixels."""
        loop = asyncio.get_running_loop()
        if req.image is not None:
            img = await loop.run_in_executor(None, decode, req.image)
            px = await loop.run_in_executor(None, to_pixels, img, req.size)
            return await loop.run_in_executor(None, normalise, px), px
        assert req.tensor is not None
        arr = np.asarray(req.tensor, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[:2] != (1, 3):
            raise RequestError(ErrorCode.BAD_REQUEST, f"tensor of shape {arr.shape}, need 1x3xHxW")
        # A tensor preprocessed from an image (the usual case) is sent on as its
        # pixels, a quarter of the bytes, when they normalise back to it exactly.
        return torch.from_numpy(arr.copy()), await loop.run_in_executor(None, pixels_of, arr)

    async def _cancel_everywhere(self, run: RequestRun) -> None:
        """The client went away: cancel the request's tiles on every peer and release
        the reservations that were not used."""
        log.info("request %s cancelled by its client", run.request_id)
        await self._cancel_on(run.request_id, run.nodes)

    async def _execute(self, run: RequestRun) -> InferResult:
        """Run the plan stage by stage; the auctioneer keeps every slab until its tile
        is back, so a lost tile can be given to another peer or computed here."""
        store, req, plan, me = self.node.store, run.req, run.plan, self.node.node_id
        _, _, h, w = run.x.shape
        self.worker.deliver_own(req.request_id)
        cur = run.x
        started = time.monotonic()
        seen = self.node.wire.setdefault((req.model, h, w), WireFractions(run.spec.n_units + 1))
        # This node's own pieces of the maps, and what the daemon's other threads took
        # from their quota meanwhile (policy/loop_share.py).
        self.node.own_pieces[req.request_id] = own = [0.0, 0.0]
        try:
            for first, last in segments(plan):
                # A folded last stage runs as strip jobs, which answer with fc1's sums.
                if first == last and not plan.folds_after(last):
                    cur = await self.stages.gather_stage(run, first, cur)
                else:
                    cur = await self.stages.halo_segment(run, first, last, cur)
                if not run.folded and (
                    len(plan.stages) > 1 or plan.stages[0].devices != (plan.auctioneer,)
                ):
                    # bit patterns, as the wire counts them (a -0.0 travels as a value)
                    m = time.monotonic()
                    bits = np.ascontiguousarray(cur.numpy(), dtype=np.float32).view(np.uint32)
                    seen.observe(plan.stages[last].stop, bits.size, int(np.count_nonzero(bits)))
                    run.span(me, "count-zeros", m, time.monotonic(), "control", last)
        finally:
            self.node.own_pieces.pop(req.request_id, None)
        t_head = time.perf_counter()
        if len(set(plan.devices)) > 1:
            self.node.ran(plan.strategy, own[1], own[0])
        remote = None if run.folded else await self.head.logits(run, cur)
        if remote is not None:
            logits = remote
        else:
            m = time.monotonic()
            if not store.fits(req.model, [HEAD]):
                log.warning(
                    "%s: running the head of %s here, past this peer's memory budget "
                    "(no other peer could take it)",
                    req.request_id,
                    req.model,
                )
            # Here is the last resort: the head is loaded even past the budget.
            head = functools.partial(store.head, force=True, folded=run.folded)
            logits, h0, h1, others = await asyncio.get_running_loop().run_in_executor(
                self.node.worker, timed, head, req.model, (h, w), cur
            )
            flops = head_flops(run.spec) - (fold_flops(run.spec) if run.folded else 0)
            self.node.served([("head", flops)], h1 - h0, others)
            run.span(me, "queue", m, h0, "wait", len(plan.stages))
            run.span(me, "head", h0, h1, "compute", len(plan.stages))
        # What this plan took against its prediction: the next choice between running
        # alone and distributing weighs it (policy/outcomes.py).
        self.desk.auctioneer.ran(plan, run.spec, time.monotonic() - started)
        m = time.monotonic()
        result = self._result(run, logits, time.perf_counter() - t_head)
        run.span(me, "result", m, time.monotonic(), "control")
        if run.timeline is not None:
            annotate(run.timeline, run, started - run.timeline.t0)
            result = dataclasses.replace(result, trace=run.timeline.to_dict())
        if req.verify:  # after ``total`` was taken: the check is not the request's time
            result = dataclasses.replace(result, max_abs_diff=await self._verify(run, logits))
        return result

    async def _verify(self, run: RequestRun, logits: torch.Tensor) -> float:
        """The largest difference between ``logits`` and the unsplit model's on this node
        (``infer_request.verify``); a failed check fails the request."""
        try:
            ref = await asyncio.get_running_loop().run_in_executor(
                self.node.worker, self.node.store.forward, run.model, run.x
            )
        except (ValueError, RuntimeError) as e:
            raise RequestError(ErrorCode.REQUEST_FAILED, f"verify: {e}") from e
        return float((logits.reshape(ref.shape) - ref).abs().max())

    def _result(self, run: RequestRun, logits: torch.Tensor, head_s: float) -> InferResult:
        req, plan, stats = run.req, run.plan, run.stats
        labels = self.node.store.labels(req.model)
        top = [
            TopK(i, label, p, float(logits.reshape(-1)[i]))
            for i, label, p in top_k(logits, labels, req.top_k)
        ]
        timing_out: dict[str, float | dict[str, float]] = {
            **run.timing,
            "compute": stats.compute,
            "transfer": stats.transfer_s,
            "bytes": float(stats.bytes),
            "retries": float(stats.retries),
            "hedges": float(stats.hedges),
            "head": head_s,
            "total": time.perf_counter() - run.t_start,
        }
        plan_dict = plan.to_dict()
        plan_dict["nodes"] = run.nodes
        plan_dict["text"] = str(plan)
        # What the plan was made from (the bid-derived cluster), for judging predictions.
        plan_dict["testbed"] = run.testbed.to_dict()
        if run.decision.round is not None:
            plan_dict["backlogs"] = {n: b.backlog for n, b in run.decision.round.bids.items()}
        planned = planned_spec(run)
        # ... and the bytes it was planned to move (benchmarks/plan_bound.py plans anew).
        plan_dict["planned_spec"] = {
            "input_shape": list(planned.input_shape),
            "input_itemsize": planned.input_itemsize,
            "wire_fraction": list(planned.wire_fraction),
        }
        return InferResult(
            req.request_id,
            req.model,
            req.strategy,
            top,
            logits.numpy().astype(np.float32),
            timing_out,
            plan_dict,
        )


def planned_spec(run: RequestRun) -> ModelSpec:
    """The model as ``run``'s plan was made for it: the round's own (its input bytes a
    value, its maps' measured wire fractions), else the store's with the input at a
    byte a value where the pixels travel."""
    if run.decision.spec is not None:
        return run.decision.spec
    if run.pixels is not None:
        return dataclasses.replace(run.spec, input_itemsize=1)
    return run.spec


def annotate(timeline: Timeline, run: RequestRun, exec_start: float) -> None:
    """Give each span the plan's prediction for the same step: the simulated interval
    of its device, stage and lane (shifted to when execution began, ``exec_start``
    seconds into the request)."""
    try:
        sim = simulate(run.plan, planned_spec(run), run.testbed, record=True)
    except ValueError:  # a plan whose testbed does not match (forced in tests)
        return
    predicted: dict[tuple[str, int, str], tuple[float, float]] = {}
    for e in sim.events:
        key = (run.nodes[e.device], e.stage, e.lane)
        a, b = predicted.get(key, (e.start, e.stop))
        predicted[key] = (min(a, e.start), max(b, e.stop))
    spans = []
    for s in timeline.spans:
        lane = "compute" if s.name in ("compute", "head", "strip", "fold") else s.lane
        got = predicted.get((s.node, s.stage, lane)) if s.stage is not None else None
        if got is not None and lane in ("compute", "send", "recv"):
            s = dataclasses.replace(s, predicted=(exec_start + got[0], exec_start + got[1]))
        spans.append(s)
    timeline.spans = spans

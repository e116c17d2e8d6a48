"""Strip-resident execution (strategy ``edgeci-halo``): strip jobs and halo mailboxes.

In a halo segment of a plan (consecutive stages linked by ``transfer="halo"``)
every peer keeps its row strip from one stage to the next; only the rows a
neighbour's next stage reads travel, directly from peer to peer (``halo_rows``).
The auctioneer sends each peer one ``strip_job`` (its rows per stage, which rows
arrive from whom, which it sends on) with the first stage's input, and gets the
last stage's strip back as a ``tile_result`` (with ``strip_job.fold``, the strip
times fc1's matching columns instead: :mod:`edgeci_p2p.nn.fold`).

This module holds the peer side: the run of a job (:func:`run_strip_job`), which
the auctioneer also uses for its own strip; the mailbox where halo rows wait for
the stage that reads them is :mod:`edgeci_p2p.aio.mailbox`. Building the jobs from a plan is
pure: :mod:`edgeci_p2p.policy.strip_jobs`.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeci_p2p.aio.mailbox import Mailbox, RowsNeverArrived, StripJobError
from edgeci_p2p.aio.strip_inputs import PieceRows, Source, covered, join_rows, resolve
from edgeci_p2p.aio.timed import timed
from edgeci_p2p.core.geometry import Region, Span, fold_flops, strip_trace
from edgeci_p2p.core.pieces import Piece, edge_first_pieces
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import Workload
from edgeci_p2p.nn.runtime import ModelStore, WorkError
from edgeci_p2p.wire.messages import HaloRows, RowsFrom, StripJob, StripStage
from edgeci_p2p.wire.tensors import payload_nbytes

Array = npt.NDArray[np.float32]

# ---- running a job (peer side, and the auctioneer's own strip) --------------------------------


def check_job(job: StripJob, spec: ModelSpec) -> None:
    """Refuse a job whose rows do not add up (raises :class:`StripJobError`)."""
    prev: StripStage | None = None
    for st in job.stages:
        if st.stop > spec.n_units:
            raise StripJobError(f"stage [{st.start}, {st.stop}) runs past unit {spec.n_units}")
        _, h, _ = spec.shape_at(st.stop)
        if not 0 <= st.rows[0] < st.rows[1] <= h:
            raise StripJobError(f"stage [{st.start}, {st.stop}): rows {list(st.rows)} of {h}")
        want = strip_trace(spec, st.start, st.stop, (st.rows[0], st.rows[1])).need.rows
        if (want.start, want.stop) != tuple(st.need):
            raise StripJobError(
                f"stage [{st.start}, {st.stop}): rows {list(st.rows)} read input rows "
                f"{[want.start, want.stop]}, not {list(st.need)}"
            )
        if prev is not None:
            own = (max(prev.rows[0], st.need[0]), min(prev.rows[1], st.need[1]))
            pieces = sorted([tuple(r.rows) for r in st.recv] + ([own] if own[0] < own[1] else []))
            at = st.need[0]
            for a, b in pieces:
                if a != at:
                    raise StripJobError(
                        f"stage [{st.start}, {st.stop}): input rows {list(st.need)} are not "
                        f"covered exactly once by its own and received rows {pieces}"
                    )
                at = b
            if at != st.need[1]:
                raise StripJobError(
                    f"stage [{st.start}, {st.stop}): input rows {list(st.need)} end "
                    f"uncovered at {at}"
                )
        prev = st


@dataclass
class StripOutcome:
    """A finished strip job here: its last strip and what it cost."""

    output: Array
    compute_s: float = 0.0
    halo_in: int = 0
    """Bytes of halo rows received from other peers."""
    halo_out: int = 0
    """Bytes of halo rows sent to other peers."""
    timeline: list[tuple[int, float, float]] = field(default_factory=list)
    """Per stage: (first unit, seconds waiting for halo rows, seconds computing)."""
    pieces: list[tuple[tuple[tuple[str, int], ...], float, float]] = field(default_factory=list)
    """Per piece computed: its FLOPs per unit kind and its compute seconds."""
    hops: list[float] = field(default_factory=list)
    """Per piece: seconds from its worker stopping to this loop having it back
    (``policy/hops.py``)."""
    spans: list[list[Any]] = field(default_factory=list)
    """Its steps for a request's timeline: ``[name, start, stop, lane, first unit of the
    stage]``, ``time.monotonic``."""

    def describe(self) -> str:
        return " ".join(f"[{u}]wait {w * 1e3:.0f}/run {c * 1e3:.0f}" for u, w, c in self.timeline)


SendRows = Callable[[str, HaloRows], Awaitable[None]]
"""Send halo rows to a node (raises when it cannot be reached)."""

_WORK: dict[tuple[str, tuple[int, int, int]], Workload] = {}


def stage_pieces(spec: ModelSpec, st: StripStage) -> tuple[Piece, ...]:
    """``st``'s output strip cut so that the rows sent on come first
    (:func:`edgeci_p2p.core.pieces.edge_first_pieces`)."""
    work = _WORK.get((spec.name, spec.input_shape))
    if work is None:
        work = _WORK[(spec.name, spec.input_shape)] = Workload(spec)
    return edge_first_pieces(
        work, st.start, st.stop, (st.rows[0], st.rows[1]), [(s.rows[0], s.rows[1]) for s in st.send]
    )


@dataclass
class _Stage:
    """A stage of the job as it runs here."""

    st: StripStage
    w_in: int
    w_out: int
    todo: list[Piece]
    """Not yet handed to the worker."""
    left: int
    """Not yet back from the worker (``todo`` included)."""
    have: list[Source] = field(default_factory=list)
    waiting: list[RowsFrom] = field(default_factory=list)
    unsent: list[RowsFrom] = field(default_factory=list)
    done: list[tuple[int, Array]] = field(default_factory=list)
    """Its pieces' output rows, back here (the last stage's only: the job's output)."""
    wait_s: float = 0.0
    run_s: float = 0.0

    def ready(self, edges_only: bool) -> Piece | None:
        """The next piece to hand over: an edge first, else any whose rows are here."""
        ok = [p for p in self.todo if covered(self.have, *p.need)]
        return next((p for p in ok if p.sends), None if edges_only else next(iter(ok), None))


@dataclass
class _Running:
    """A piece handed to the worker, not yet back."""

    stage: _Stage | None
    piece: Piece | None
    """None: the fold (``strip_job.fold``), behind the last stage's pieces."""
    future: asyncio.Future[tuple[Array, float, float, float]]
    handed: float
    """When it was handed over (``time.monotonic``)."""
    queued: bool
    """Handed over behind another piece still running: its time starts when the
    worker takes it, not when it was handed over."""

    def begin(self, started: float) -> float:
        """When its time starts, given when the worker took it (``started``)."""
        return max(self.handed, started) if self.queued else self.handed


IN_FLIGHT = 2
"""Pieces on the worker at once: the one running and the next, which the worker
starts as soon as the first is done, while this loop sends the rows just computed.
With one, the worker waited for the loop between pieces (the hop back to the loop, the
sends, the hop out again): on a capped peer, whatever the loop had to do first (a
neighbour's rows to decode, a bid) and the wait for its quota. The next piece may be
the next stage's edge (its neighbours' rows in): it reads this stage's pieces on the
worker, so a stage's first piece no longer waits for the loop to take the last one back."""


def _piece(
    store: ModelStore, job: StripJob, s: _Stage, p: Piece, have: list[Source], out: PieceRows
) -> Array:
    """Worker thread: piece ``p`` of stage ``s`` from its input rows ``have``."""
    xin = join_rows(resolve(have), *p.need)
    if xin is None:  # a piece before it failed (the job fails on that one)
        raise StripJobError(f"stage [{s.st.start}, {s.st.stop}): rows {list(p.need)} missing")
    st = s.st
    out.value = store.run_tile(
        job.model,
        job.fingerprint,
        (job.input_hw[0], job.input_hw[1]),
        st.start,
        st.stop,
        Region(Span(*p.rows), Span(0, s.w_out)),
        xin,
        Region(Span(*p.need), Span(0, s.w_in)),
    )
    return out.value


def _until(begin: float, stopped: float, behind: list[_Running]) -> float:
    """A piece's seconds as the plan sees it, from ``begin``: on a capped peer the hop to
    the worker and back (the wait for the quota) is part of it, so it lasts until this
    loop has it back, unless the worker went straight on to a piece handed over before
    it stopped (``behind``). Then the hop back is the loop's, beside the worker, and the
    next piece's time (and its ``others`` CPU) already holds the loop's share of the
    quota: counted here as well, it was counted twice."""
    went_on = any(r.handed <= stopped for r in behind)
    return (stopped if went_on else time.monotonic()) - begin


def _folded(store: ModelStore, job: StripJob, have: list[Source]) -> Array:
    """Worker thread: the last strip (its pieces' rows) times fc1's matching columns."""
    rows = (job.stages[-1].rows[0], job.stages[-1].rows[1])
    y = join_rows(resolve(have), *rows)
    if y is None:  # a piece before it failed (the job fails on that one)
        raise StripJobError(f"the last strip's rows {list(rows)} are missing")
    return store.fold(job.model, job.fingerprint, (job.input_hw[0], job.input_hw[1]), rows, y)


async def run_strip_job(
    job: StripJob,
    store: ModelStore,
    worker: Executor,
    mailbox: Mailbox,
    send_rows: SendRows,
    timeout: float,
    wire_nbytes: Callable[[npt.NDArray[np.float32]], int] = payload_nbytes,
) -> StripOutcome:
    """Run ``job`` here: each stage on ``worker`` (its edge rows first, see
    :func:`stage_pieces`), halo rows out through ``send_rows`` as soon as they are
    computed and in through ``mailbox``. Returns the last strip and the compute seconds.

    The caller has claimed the job's mailbox box and ends it afterwards.
    ``wire_nbytes`` counts the halo bytes as they cross (zero-suppressed or not).
    """
    # Sends run while the stage goes on; all must have left before the job reports
    # success (a lost neighbour fails the job).
    loop = asyncio.get_running_loop()
    spec = store.spec(job.model, *job.input_hw)
    deadline = time.monotonic() + timeout
    check_job(job, spec)
    x: Array = np.asarray(job.input, dtype=np.float32)
    out = StripOutcome(x)
    sends: list[asyncio.Future[None]] = []
    running: list[_Running] = []
    stages: list[_Stage] = []
    for st in job.stages:
        todo = list(stage_pieces(spec, st))
        w_in, w_out = spec.shape_at(st.start)[2], spec.shape_at(st.stop)[2]
        stages.append(_Stage(st, w_in, w_out, todo, len(todo), [], list(st.recv), list(st.send)))
    stages[0].have.append((job.stages[0].need[0], job.stages[0].need[0] + x.shape[2], x))
    last = job.stages[-1]
    if job.fold and (last.stop != spec.n_units or fold_flops(spec) == 0):
        raise WorkError(f"strip job ends at unit {last.stop}: there is no head to fold into")
    folded: list[Source] = []  # the last stage's pieces, which the fold reads
    folding: list[_Running] = []

    def failed(f: asyncio.Future[None]) -> None:
        if not f.cancelled() and f.exception() is not None:
            mailbox.nudge(job.request_id, job.job_id)  # a stage waiting for rows: fail now

    def poll(s: _Stage) -> None:
        for r in list(s.waiting):
            got = mailbox.poll(job.request_id, job.job_id, s.st.start, r.rows)
            if got is None:
                continue
            if got.shape[2:] != (r.rows[1] - r.rows[0], s.w_in):
                raise StripJobError(f"{r.node} sent rows {list(r.rows)} of shape {list(got.shape)}")
            s.have.append((r.rows[0], r.rows[1], got))
            out.halo_in += wire_nbytes(got)
            s.waiting.remove(r)

    def pick(cur: int) -> tuple[_Stage, Piece] | None:
        s = stages[cur]
        p = s.ready(edges_only=False)
        if p is not None or s.todo or cur + 1 == len(stages):
            return None if p is None else (s, p)
        # All of this stage is on the worker: the next stage's edges whose rows are in
        # go behind it, and its middle once they are all handed over (edges first).
        nxt = stages[cur + 1]
        p = nxt.ready(edges_only=any(q.sends for q in nxt.todo))
        return None if p is None else (nxt, p)

    def hand(s: _Stage, p: Piece) -> None:
        s.todo.remove(p)
        cell = PieceRows(*p.rows)
        i = stages.index(s)
        (stages[i + 1].have if i + 1 < len(stages) else folded).append((*p.rows, cell))
        args = (store, job, s, p, list(s.have), cell)
        future = loop.run_in_executor(worker, timed, _piece, *args)
        running.append(_Running(s, p, future, time.monotonic(), bool(running)))

    def hand_fold() -> None:
        future = loop.run_in_executor(worker, timed, _folded, store, job, list(folded))
        folding.append(_Running(None, None, future, time.monotonic(), bool(running)))

    async def back(r: _Running) -> None:
        s, p = r.stage, r.piece
        assert s is not None and p is not None
        try:
            yp, started, stopped, others = await r.future
        except ValueError as e:  # WorkError included
            raise WorkError(str(e)) from e
        out.hops.append(time.monotonic() - stopped)
        begin = r.begin(started)
        span = _until(begin, stopped, running + folding)
        s.run_s += span
        # Until the worker stopped: the hop back to this loop is the loop's, and a
        # piece queued behind this one starts then (the critical path would
        # otherwise see the queued piece begin before this one ended).
        out.spans.append(["compute", begin, max(begin, stopped), "compute", s.st.start])
        out.pieces.append((p.unit_flops, max(span, stopped - started), others))
        s.left -= 1
        if s is stages[-1]:  # earlier stages' rows live on in the next one's inputs
            s.done.append((p.rows[0], yp))
        for m in list(s.unsent):
            if p.rows[0] <= m.rows[0] and m.rows[1] <= p.rows[1]:
                part = np.ascontiguousarray(yp[:, :, m.rows[0] - p.rows[0] : m.rows[1] - p.rows[0]])
                out.halo_out += wire_nbytes(part)
                msg = HaloRows(job.request_id, job.job_id, s.st.stop, m.rows, part)
                sent = asyncio.ensure_future(send_rows(m.node, msg))
                sent.add_done_callback(failed)
                sends.append(sent)
                s.unsent.remove(m)

    try:
        cur = 0
        while cur < len(stages):
            for s in stages[cur : cur + 2]:
                poll(s)
            while len(running) < IN_FLIGHT and (nxt := pick(cur)) is not None:
                hand(*nxt)
            if job.fold and not folding and not stages[-1].todo and len(running) < IN_FLIGHT:
                hand_fold()
            left = deadline - time.monotonic()
            awaited = any(s.waiting and s.todo for s in stages[cur : cur + 2])
            if not running:
                # A neighbour already gone will send nothing either: fail now.
                for f in sends:
                    if f.done() and not f.cancelled() and f.exception() is not None:
                        raise StripJobError(f"a halo send failed: {f.exception()}")
                if left <= 0:
                    rows = [list(r.rows) for r in stages[cur].waiting]
                    where = stages[cur].st.start
                    raise RowsNeverArrived(f"rows {rows} at boundary {where} never arrived")
                t, m = time.perf_counter(), time.monotonic()
                await mailbox.wait(job.request_id, job.job_id, left)
                out.spans.append(["halo-wait", m, time.monotonic(), "wait", stages[cur].st.start])
                stages[cur].wait_s += time.perf_counter() - t
                continue
            if len(running) < IN_FLIGHT and awaited and left > 0:
                # A piece waits for rows: should they come while the worker runs,
                # it is queued at once, not after the running piece is back.
                arrival = asyncio.ensure_future(mailbox.wait(job.request_id, job.job_id, left))
                try:
                    await asyncio.wait((running[0].future, arrival), return_when=FIRST_COMPLETED)
                finally:
                    arrival.cancel()
                if not running[0].future.done():
                    continue
            await back(running.pop(0))
            while cur < len(stages) and stages[cur].left == 0:
                s = stages[cur]
                assert not s.unsent and not s.waiting
                s.have.clear()  # read by its pieces, all back
                out.compute_s += s.run_s
                out.timeline.append((s.st.start, s.wait_s, s.run_s))
                cur += 1
        if job.fold:
            if not folding:
                hand_fold()
            y, started, stopped, others = await folding[0].future
            begin = folding[0].begin(started)
            span = _until(begin, stopped, [])
            out.spans.append(["fold", begin, max(begin, stopped), "compute", last.start])
            flops = fold_flops(spec) * (last.rows[1] - last.rows[0]) // spec.shape_at(last.stop)[1]
            out.pieces.append(((("head", flops),), max(span, stopped - started), others))
            out.compute_s += span
        else:
            joined = join_rows(stages[-1].done, *last.rows)
            assert joined is not None
            y = joined
        await asyncio.gather(*sends)
    finally:
        for piece_run in running + folding:  # a failed job's pieces still queued: not run
            piece_run.future.cancel()
        for f in sends:
            if not f.done():
                f.cancel()
            elif not f.cancelled():
                # Retrieved, so a failed send (a neighbour gone) behind the job's own
                # error is not logged as "exception never retrieved" later.
                f.exception()
    out.output = y
    return out

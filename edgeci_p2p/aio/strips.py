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
from edgeci_p2p.aio.timed import timed
from edgeci_p2p.core.geometry import Region, Span, fold_flops, strip_trace
from edgeci_p2p.core.pieces import Piece, edge_first_pieces
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import Workload
from edgeci_p2p.nn.runtime import ModelStore, WorkError
from edgeci_p2p.wire.messages import HaloRows, StripJob, StripStage
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


def _timed_piece(work: Callable[..., Array], *args: Any) -> tuple[Array, float, float]:
    """Worker thread: a piece of work (a tile, a fold), its compute seconds, and the CPU
    seconds the process's other threads ran meanwhile."""
    y, started, stopped, others = timed(work, *args)
    return y, stopped - started, others


@dataclass
class _Running:
    """A piece handed to the worker, not yet back."""

    piece: Piece
    future: asyncio.Future[tuple[Array, float, float, float]]
    handed: float
    """When it was handed over (``time.monotonic``)."""
    queued: bool
    """Handed over behind another piece still running: its time starts when the
    worker takes it, not when it was handed over."""


IN_FLIGHT = 2
"""Pieces of a stage on the worker at once: the one running and the next, which the
worker starts as soon as the first is done, while this loop sends the rows just
computed. With one, the worker waited for the loop between pieces (the hop back to
the loop, the sends, the hop out again): on a capped peer, whatever the loop had to do
first (a neighbour's rows to decode, a bid) and the wait for its quota."""


async def _fold(
    job: StripJob, spec: ModelSpec, store: ModelStore, worker: Executor, y: Array, out: StripOutcome
) -> Array:
    """The last strip ``y`` times fc1's matching columns (``strip_job.fold``)."""
    last = job.stages[-1]
    _, h, _ = spec.shape_at(last.stop)
    if last.stop != spec.n_units or fold_flops(spec) == 0:
        raise WorkError(f"strip job ends at unit {last.stop}: there is no head to fold into")
    t0, m = time.perf_counter(), time.monotonic()
    z, took, others = await asyncio.get_running_loop().run_in_executor(
        worker,
        _timed_piece,
        store.fold,
        job.model,
        job.fingerprint,
        (job.input_hw[0], job.input_hw[1]),
        (last.rows[0], last.rows[1]),
        y,
    )
    span = time.perf_counter() - t0
    out.spans.append(["fold", m, time.monotonic(), "compute", last.start])
    flops = fold_flops(spec) * (last.rows[1] - last.rows[0]) // h
    out.pieces.append(((("head", flops),), max(span, took), others))
    out.compute_s += span
    return z


def _covered(have: list[tuple[int, Array]], a: int, b: int) -> bool:
    """Whether input rows ``[a, b)`` are all here (without gathering them)."""
    at = a
    for start, arr in sorted(have, key=lambda h: h[0]):
        if start <= at < start + arr.shape[2]:
            at = start + arr.shape[2]
            if at >= b:
                return True
    return at >= b


def _rows(have: list[tuple[int, Array]], a: int, b: int) -> Array | None:
    """Input rows ``[a, b)`` from what is here (own and received pieces), or None."""
    out: list[Array] = []
    at = a
    for start, arr in sorted(have, key=lambda h: h[0]):
        stop = start + arr.shape[2]
        if start <= at < stop:
            take = min(stop, b)
            out.append(arr[:, :, at - start : take - start])
            at = take
            if at >= b:
                break
    if at < b:
        return None
    if len(out) == 1:
        return out[0]
    if not max(out, key=lambda a: a.shape[2]).transpose(0, 2, 3, 1).flags.c_contiguous:
        return np.concatenate(out, axis=2)
    # The own rows are channels-last (a packed model's stage output): join in that
    # layout, so that only the few received halo rows are transposed, and the worker's
    # copy (FusedExecutor.own_slab) is a straight one.
    nhwc = np.concatenate([a.transpose(0, 2, 3, 1) for a in out], axis=1)
    return nhwc.transpose(0, 3, 1, 2)


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
    prev: StripStage | None = None
    y: Array = x
    out = StripOutcome(x)
    sends: list[asyncio.Future[None]] = []
    running: list[_Running] = []

    def failed(f: asyncio.Future[None]) -> None:
        if not f.cancelled() and f.exception() is not None:
            mailbox.nudge(job.request_id, job.job_id)  # a stage waiting for rows: fail now

    try:
        for st in job.stages:
            _, _, w_in = spec.shape_at(st.start)
            _, _, w_out = spec.shape_at(st.stop)
            if prev is None:
                have = [(st.need[0], x)]
            else:
                a, b = max(prev.rows[0], st.need[0]), min(prev.rows[1], st.need[1])
                have = [(a, y[:, :, a - prev.rows[0] : b - prev.rows[0]])] if a < b else []
            waiting = list(st.recv)
            todo = list(stage_pieces(spec, st))
            done: list[tuple[int, Array]] = []
            unsent = list(st.send)
            wait_s = run_s = 0.0
            while todo:
                for r in list(waiting):
                    got = mailbox.poll(job.request_id, job.job_id, st.start, r.rows)
                    if got is None:
                        continue
                    if got.shape[2:] != (r.rows[1] - r.rows[0], w_in):
                        raise StripJobError(
                            f"{r.node} sent rows {list(r.rows)} of shape {list(got.shape)}"
                        )
                    have.append((r.rows[0], got))
                    out.halo_in += wire_nbytes(got)
                    waiting.remove(r)
                # Edges first when they can run; else whatever can (never idle needlessly).
                handed = [r.piece for r in running]
                ready = [p for p in todo if p not in handed and _covered(have, *p.need)]
                if not ready and not running:
                    # A neighbour already gone will send nothing either: fail now.
                    for f in sends:
                        if f.done() and not f.cancelled() and f.exception() is not None:
                            raise StripJobError(f"a halo send failed: {f.exception()}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        rows = [list(r.rows) for r in waiting]
                        raise RowsNeverArrived(f"rows {rows} at boundary {st.start} never arrived")
                    t = time.perf_counter()
                    m = time.monotonic()
                    await mailbox.wait(job.request_id, job.job_id, left)
                    out.spans.append(["halo-wait", m, time.monotonic(), "wait", st.start])
                    wait_s += time.perf_counter() - t
                    continue
                while len(running) < IN_FLIGHT and ready:
                    p = next((p for p in ready if p.sends), ready[0])
                    ready.remove(p)
                    xin = _rows(have, *p.need)
                    assert xin is not None
                    future = loop.run_in_executor(
                        worker,
                        timed,
                        store.run_tile,
                        job.model,
                        job.fingerprint,
                        (job.input_hw[0], job.input_hw[1]),
                        st.start,
                        st.stop,
                        Region(Span(*p.rows), Span(0, w_out)),
                        xin,
                        Region(Span(*p.need), Span(0, w_in)),
                    )
                    running.append(_Running(p, future, time.monotonic(), bool(running)))
                left = deadline - time.monotonic()
                if len(running) < IN_FLIGHT and waiting and len(todo) > len(running) and left > 0:
                    # A piece waits for rows: should they come while the worker runs,
                    # it is queued at once, not after the running piece is back.
                    arrival = asyncio.ensure_future(mailbox.wait(job.request_id, job.job_id, left))
                    try:
                        await asyncio.wait(
                            (running[0].future, arrival), return_when=FIRST_COMPLETED
                        )
                    finally:
                        arrival.cancel()
                    if not running[0].future.done():
                        continue
                oldest = running.pop(0)
                p = oldest.piece
                try:
                    yp, started, stopped, others = await oldest.future
                except ValueError as e:  # WorkError included
                    raise WorkError(str(e)) from e
                back = time.monotonic()
                begin = max(oldest.handed, started) if oldest.queued else oldest.handed
                span = back - begin
                run_s += span
                # Until the worker stopped: the hop back to this loop is the loop's, and a
                # piece queued behind this one starts then (the critical path would
                # otherwise see the queued piece begin before this one ended).
                out.spans.append(["compute", begin, max(begin, stopped), "compute", st.start])
                # The piece as the plan sees it: the hop to the worker and back included
                # (on a capped peer, the wait for the quota), not only the worker's time.
                out.pieces.append((p.unit_flops, max(span, stopped - started), others))
                todo.remove(p)
                done.append((p.rows[0], yp))
                for s in list(unsent):
                    if p.rows[0] <= s.rows[0] and s.rows[1] <= p.rows[1]:
                        part = np.ascontiguousarray(
                            yp[:, :, s.rows[0] - p.rows[0] : s.rows[1] - p.rows[0]]
                        )
                        out.halo_out += wire_nbytes(part)
                        msg = HaloRows(job.request_id, job.job_id, st.stop, s.rows, part)
                        sent = asyncio.ensure_future(send_rows(s.node, msg))
                        sent.add_done_callback(failed)
                        sends.append(sent)
                        unsent.remove(s)
            whole = _rows(done, *st.rows)
            assert whole is not None and not unsent and not waiting
            y = whole
            out.compute_s += run_s
            out.timeline.append((st.start, wait_s, run_s))
            prev = st
        if job.fold:
            y = await _fold(job, spec, store, worker, y, out)
        await asyncio.gather(*sends)
    finally:
        for piece_run in running:  # a failed job's pieces still queued: not run, nor their errors
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

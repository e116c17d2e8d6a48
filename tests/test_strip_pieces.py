"""Strip jobs compute the rows their neighbours read first, send them, and compute the
rest of the strip while they travel (``stage_pieces`` and ``run_strip_job``)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from edgeci_p2p.aio.mailbox import Mailbox, StripJobError
from edgeci_p2p.aio.strips import _Running, _until, run_strip_job, stage_pieces
from edgeci_p2p.core.geometry import Region, Span, region_flops
from edgeci_p2p.core.pieces import MAX_SEAM_OVERHEAD
from edgeci_p2p.core.plan import Plan, segments
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners.halo import plan_edgeci_halo
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.policy.strip_jobs import strip_jobs
from edgeci_p2p.wire.messages import HaloRows, StripJob, StripStage
from tests.daemons import WAIT_S

SPECS = {name: spec_for(name) for name in ("vgg16", "resnet34")}
TESTBEDS = ("emulated-4", "homog-4", "pi4-wifi-4")


def halo_plans() -> list[tuple[ModelSpec, Plan]]:
    out = []
    for spec, tb in itertools.product(SPECS.values(), TESTBEDS):
        plan = plan_edgeci_halo(spec, load_testbed(tb))
        if any(st.transfer == "halo" for st in plan.stages):
            out.append((spec, plan))
    return out


PLANS = halo_plans()


def all_jobs(spec: ModelSpec, plan: Plan) -> list[StripStage]:
    out: list[StripStage] = []
    nodes = [f"n{i}" for i in range(len(plan.devices))]
    for first, last in segments(plan):
        jobs = strip_jobs(spec, plan, first, last, nodes)
        if jobs is not None:
            for stages in jobs.stages.values():
                out.extend(stages)
    return out


def test_there_are_halo_plans_to_check() -> None:
    assert len(PLANS) >= 3


@pytest.mark.parametrize("spec,plan", PLANS, ids=[f"{p.model}-{p.testbed}" for _, p in PLANS])
def test_pieces_cover_each_strip_once_and_hold_each_send_whole(spec: ModelSpec, plan: Plan) -> None:
    split = 0
    for st in all_jobs(spec, plan):
        pieces = stage_pieces(spec, st)
        at = st.rows[0]
        for p in pieces:
            assert p.rows[0] == at and p.rows[0] < p.rows[1]
            at = p.rows[1]
            assert st.need[0] <= p.need[0] < p.need[1] <= st.need[1]
        assert at == st.rows[1]
        for s in st.send:
            holders = [p for p in pieces if p.rows[0] <= s.rows[0] and s.rows[1] <= p.rows[1]]
            assert len(holders) == 1 and holders[0].sends
        if len(pieces) > 1:
            split += 1
            _, _, w = spec.shape_at(st.stop)

            def flops(a: int, b: int, st: StripStage = st, w: int = w) -> int:
                return region_flops(spec, st.start, st.stop, Region(Span(a, b), Span(0, w)))

            assert sum(flops(*p.rows) for p in pieces) <= (1 + MAX_SEAM_OVERHEAD) * flops(*st.rows)
            assert sum(p.rows[1] - p.rows[0] for p in pieces if p.sends) * 2 <= (
                st.rows[1] - st.rows[0]
            )
    assert split > 0  # the early sends do happen in shipped plans


# ---- the order of work in a job, with a store that only records ---------------------------------


class RecordingStore:
    """Stands in for ModelStore: outputs of the right shape, every call logged."""

    def __init__(
        self, spec: ModelSpec, log: list[str], ran: Callable[[str], None] = lambda e: None
    ) -> None:
        self._spec, self.log, self.ran = spec, log, ran

    def spec(self, name: str, height: int, width: int) -> ModelSpec:
        return self._spec

    def run_tile(
        self,
        name: str,
        fingerprint: str,
        input_hw: tuple[int, int],
        start: int,
        stop: int,
        out: Region,
        x: np.ndarray,
        x_region: Region,
    ) -> np.ndarray:
        assert x.shape[2] == x_region.rows.size
        entry = f"run {start} {out.rows.start}:{out.rows.stop}"
        self.log.append(entry)
        self.ran(entry)  # on the worker thread, once logged
        c, _, _ = self._spec.shape_at(stop)
        return np.full((1, c, out.rows.size, out.cols.size), float(start), np.float32)

    def fold(
        self, name: str, fingerprint: str, input_hw: tuple[int, int], rows: tuple[int, int], y: Any
    ) -> np.ndarray:
        assert y.shape[2] == rows[1] - rows[0]
        self.log.append("fold")
        return np.zeros((1, 4096, 1, 1), np.float32)


def middle_job(spec: ModelSpec) -> StripJob:
    """The middle peer of three over VGG-16's pool1, conv2_1, conv2_2 (units 2, 3, 4):
    it sends its edge rows to both neighbours and reads theirs at each boundary."""
    from edgeci_p2p.core.plan import Plan as P
    from tests.planfakes import strips

    stages = (
        strips(spec, 2, 3, [1, 2, 1], "halo"),
        strips(spec, 3, 4, [1, 2, 1], "halo"),
        strips(spec, 4, 5, [1, 2, 1], "gather"),
        strips(spec, 5, spec.n_units, [1], "gather"),
    )
    plan = P(spec.name, "edgeci-halo", "test", ("a", "b", "c"), stages, auctioneer=0)
    jobs = strip_jobs(spec, plan, 0, 2, ["a", "b", "c"])
    assert jobs is not None
    need = jobs.first_need[1]
    c, _, w = spec.shape_at(2)
    x = np.zeros((1, c, need.size, w), np.float32)
    return StripJob("r", 1, 1, spec.name, "fp", jobs.stages[1], x, (224, 224))


def neighbours_rows(box: Mailbox, spec: ModelSpec, job: StripJob) -> None:
    """Put in ``box`` every row ``job`` receives from its neighbours (zeros)."""
    for st in job.stages[1:]:
        for r in st.recv:
            c, _, w = spec.shape_at(st.start)
            data = np.zeros((1, c, r.rows[1] - r.rows[0], w), np.float32)
            box.put(HaloRows("r", 1, st.start, r.rows, data))


def test_edge_rows_are_sent_as_soon_as_computed_and_the_middle_runs_last() -> None:
    spec = SPECS["vgg16"]
    job = middle_job(spec)
    first = job.stages[0]
    assert len(stage_pieces(spec, first)) == 3
    log: list[str] = []
    box = Mailbox()
    box.claim("r", 1)

    def send(node: str, msg: HaloRows) -> Awaitable[None]:
        # Logged when the job hands the rows over, not when the event loop runs the send.
        log.append(f"send {node} {msg.rows[0]}:{msg.rows[1]}")
        return asyncio.sleep(0)

    async def main() -> None:
        # The neighbours' rows are already here: nothing waits.
        neighbours_rows(box, spec, job)
        with ThreadPoolExecutor(1) as ex:
            out = await run_strip_job(job, RecordingStore(spec, log), ex, box, send, timeout=5.0)  # type: ignore[arg-type]
        assert out.output.shape[2] == job.stages[-1].rows[1] - job.stages[-1].rows[0]
        # Every piece tells how long this loop took to have it back (policy/hops.py).
        pieces = sum(len(stage_pieces(spec, st)) for st in job.stages)
        assert len(out.hops) == pieces and min(out.hops) >= 0.0

    asyncio.run(main())
    runs_first = [e for e in log if e.startswith("run 2")]
    sends = [i for i, e in enumerate(log) if e.startswith("send")]
    assert len(runs_first) == 3
    # The edges ran first, the middle last; the first edge's rows left before the middle
    # began, the second's while it ran (the worker already had it: see the next test),
    # both before the next stage.
    edges = [e for e in runs_first if e != middle_run(spec, first)]
    assert len(edges) == 2 and runs_first[-1] == middle_run(spec, first)
    middle = log.index(runs_first[-1])
    next_stage = log.index(next(e for e in log if e.startswith("run 3")))
    assert sends[0] < middle and len([i for i in sends if i < next_stage]) >= 2, log


async def no_send(node: str, msg: HaloRows) -> None:
    """A halo send that goes nowhere (the test watches the worker, not the rows)."""


class CountingWorker(ThreadPoolExecutor):
    """The one worker thread, counting the work handed to it (from the event loop)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.handed = 0
        self._more = threading.Condition()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._more:
            self.handed += 1
            self._more.notify_all()
        return super().submit(fn, *args, **kwargs)

    def handed_at_least(self, n: int, timeout: float) -> bool:
        """On the worker thread: wait until ``n`` pieces have been handed over."""
        with self._more:
            return self._more.wait_for(lambda: self.handed >= n, timeout)


def middle_run(spec: ModelSpec, st: StripStage) -> str:
    """The log entry of ``st``'s middle piece (the one that sends nothing)."""
    p = next(p for p in stage_pieces(spec, st) if not p.sends)
    return f"run {st.start} {p.rows[0]}:{p.rows[1]}"


def test_the_worker_has_the_next_piece_before_the_first_is_back() -> None:
    # A piece handed to the worker only once the one before is back leaves the worker
    # idle through the hop back to the loop and out again (on a capped peer, the wait
    # for the quota as well). Here the first piece cannot finish until the worker has
    # been handed a second: a job that hands over one piece at a time fails.
    spec = SPECS["vgg16"]
    job = middle_job(spec)
    log: list[str] = []
    box = Mailbox()
    box.claim("r", 1)
    neighbours_rows(box, spec, job)

    waited: list[bool] = []

    async def main() -> None:
        with CountingWorker() as ex:

            def ran(entry: str) -> None:
                if not waited:  # the first piece, on the worker
                    waited.append(ex.handed_at_least(2, WAIT_S))

            store = RecordingStore(spec, log, ran)
            await run_strip_job(job, store, ex, box, no_send, timeout=60.0)  # type: ignore[arg-type]

    asyncio.run(main())
    assert waited == [True], log


def test_rows_that_come_while_the_middle_runs_queue_an_edge_behind_it() -> None:
    # The second stage's middle runs first (its neighbours' rows are not here yet). The
    # rows come while it runs: an edge goes to the worker then, not once the middle is
    # back. Here the middle cannot finish until the worker has been handed an edge.
    spec = SPECS["vgg16"]
    job = middle_job(spec)
    pieces = stage_pieces(spec, job.stages[1])
    middle = middle_run(spec, job.stages[1])
    assert len(pieces) == 3 and not pieces[1].sends
    log: list[str] = []
    waited: list[bool] = []

    async def main() -> None:
        box = Mailbox()
        box.claim("r", 1)
        loop = asyncio.get_running_loop()

        def deliver() -> None:
            neighbours_rows(box, spec, job)

        with CountingWorker() as ex:

            def ran(entry: str) -> None:
                if entry == middle:  # on the worker
                    handed = ex.handed
                    loop.call_soon_threadsafe(deliver)
                    waited.append(ex.handed_at_least(handed + 1, WAIT_S))

            store = RecordingStore(spec, log, ran)
            await run_strip_job(job, store, ex, box, no_send, timeout=60.0)  # type: ignore[arg-type]

    asyncio.run(main())
    assert waited == [True], log
    edges = [f"run 3 {p.rows[0]}:{p.rows[1]}" for p in pieces if p.sends]
    assert log.index(middle) < min(log.index(e) for e in edges)


def test_the_next_stages_edge_goes_to_the_worker_before_this_stages_middle_is_back() -> None:
    # A stage's first piece handed over only once the loop has the last one back and
    # has joined the strip leaves the worker idle through that hop at every boundary.
    # Here the neighbours' rows are in from the start, and the first stage's middle
    # cannot finish until the worker has been handed one more piece: the next stage's
    # edge, which reads the middle's rows on the worker.
    spec = SPECS["vgg16"]
    job = middle_job(spec)
    middle = middle_run(spec, job.stages[0])
    first = len(stage_pieces(spec, job.stages[0]))
    log: list[str] = []
    waited: list[bool] = []
    box = Mailbox()
    box.claim("r", 1)
    neighbours_rows(box, spec, job)

    async def main() -> None:
        with CountingWorker() as ex:

            def ran(entry: str) -> None:
                if entry == middle:  # on the worker: all the first stage handed, and one more
                    waited.append(ex.handed_at_least(first + 1, WAIT_S))

            store = RecordingStore(spec, log, ran)
            out = await run_strip_job(job, store, ex, box, no_send, timeout=60.0)  # type: ignore[arg-type]
            assert out.output.shape[2] == job.stages[-1].rows[1] - job.stages[-1].rows[0]

    asyncio.run(main())
    assert waited == [True], log
    after = log[log.index(middle) + 1]
    edges = [f"run 3 {p.rows[0]}:{p.rows[1]}" for p in stage_pieces(spec, job.stages[1]) if p.sends]
    assert after in edges, log


def test_the_fold_goes_to_the_worker_before_the_last_piece_is_back() -> None:
    # The middle peer of three over VGG-16's last two stages, folding its last strip
    # into fc1: the fold reads the last piece's rows on the worker, so it is handed
    # over behind that piece, which here cannot finish until it has been.
    from edgeci_p2p.core.plan import Plan as P
    from tests.planfakes import strips

    spec = SPECS["vgg16"]
    n = spec.n_units
    stages = (
        strips(spec, n - 4, n - 2, [1, 2, 1], "halo"),
        strips(spec, n - 2, n, [1, 2, 1], "gather"),
    )
    plan = P(spec.name, "edgeci-halo", "test", ("a", "b", "c"), stages, auctioneer=0)
    jobs = strip_jobs(spec, plan, 0, 1, ["a", "b", "c"])
    assert jobs is not None
    c, _, w = spec.shape_at(n - 4)
    x = np.zeros((1, c, jobs.first_need[1].size, w), np.float32)
    job = StripJob("r", 1, 1, spec.name, "fp", jobs.stages[1], x, (224, 224), fold=True)
    pieces = sum(len(stage_pieces(spec, st)) for st in job.stages)
    last = f"run {n - 2} {job.stages[-1].rows[0]}:{job.stages[-1].rows[1]}"
    box = Mailbox()
    box.claim("r", 1)
    c, _, w = spec.shape_at(n - 2)
    for r in job.stages[1].recv:
        rows = np.zeros((1, c, r.rows[1] - r.rows[0], w), np.float32)
        box.put(HaloRows("r", 1, n - 2, r.rows, rows))
    log: list[str] = []
    waited: list[bool] = []

    async def main() -> None:
        with CountingWorker() as ex:

            def ran(entry: str) -> None:
                if entry == last:  # on the worker
                    waited.append(ex.handed_at_least(pieces + 1, WAIT_S))

            store = RecordingStore(spec, log, ran)
            out = await run_strip_job(job, store, ex, box, no_send, timeout=60.0)  # type: ignore[arg-type]
            assert out.output.shape == (1, 4096, 1, 1)

    asyncio.run(main())
    assert waited == [True] and log[-2:] == [last, "fold"], log


def test_a_piece_the_worker_went_straight_on_from_ends_when_the_worker_stopped() -> None:
    # Its hop back to the loop ran beside the next piece: counted, it held the loop's
    # wait for a quota the worker was spending, and the calibrated bids drifted slow.
    def handed(at: float) -> _Running:
        return _Running(None, None, Future(), at, True)  # type: ignore[arg-type]

    assert _until(0.5, 2.0, [handed(1.0)]) == 1.5
    # Nothing handed over before it stopped: the worker waited for the loop, and the
    # piece lasts until the loop has it back (here, now).
    assert _until(0.5, 2.0, [handed(3.0)]) > 1.5
    assert _until(0.5, 2.0, []) > 1.5


def test_a_late_neighbour_does_not_stall_the_middle_and_a_missing_one_fails() -> None:
    spec = SPECS["vgg16"]
    job = middle_job(spec)
    second = job.stages[1]
    pieces = stage_pieces(spec, second)
    assert len(pieces) == 3
    middle = f"run 3 {pieces[1].rows[0]}:{pieces[1].rows[1]}"
    log: list[str] = []

    async def send(node: str, msg: HaloRows) -> None:
        log.append(f"send {node}")

    async def main(deliver: bool, timeout: float) -> None:
        box = Mailbox()
        box.claim("r", 1)
        loop = asyncio.get_running_loop()
        middle_ran = asyncio.Event()

        def ran(entry: str) -> None:
            if entry == middle:
                loop.call_soon_threadsafe(middle_ran.set)

        async def late() -> None:
            # The neighbours' rows come only once the second stage's middle has run:
            # a job that waited for them before computing the middle would never get
            # them (and fail at its timeout).
            await middle_ran.wait()
            log.append("rows arrive")
            neighbours_rows(box, spec, job)

        task = asyncio.ensure_future(late()) if deliver else None
        with ThreadPoolExecutor(1) as ex:
            store = RecordingStore(spec, log, ran)
            await run_strip_job(job, store, ex, box, send, timeout=timeout)  # type: ignore[arg-type]
        if task is not None:
            await task

    asyncio.run(main(True, timeout=30.0))
    # The second stage's middle reads only this peer's rows: it ran before they came,
    # and its edges after.
    edge = f"run 3 {pieces[0].rows[0]}:{pieces[0].rows[1]}"
    assert log.index(middle) < log.index("rows arrive") < log.index(edge)
    log.clear()
    # Rows that never come: the job fails at its timeout (nothing can race it).
    with pytest.raises(StripJobError, match="never arrived"):
        asyncio.run(main(False, timeout=0.2))
    assert middle in log and edge not in log


def test_a_neighbour_gone_fails_the_job_at_once_and_no_send_error_goes_unretrieved() -> None:
    # The middle job's sends to one neighbour fail (it went away); the rows it waits
    # for never come. The job must fail with the send's error without waiting out its
    # (hour-long) timeout, and no failed send may be left for asyncio to report as
    # "exception was never retrieved".
    spec = SPECS["vgg16"]
    job = middle_job(spec)
    log: list[str] = []
    unretrieved: list[dict[str, object]] = []

    async def send(node: str, msg: HaloRows) -> None:
        log.append(f"send {node}")
        raise StripJobError(f"neighbour {node} went away")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
        box = Mailbox()
        box.claim("r", 1)
        with ThreadPoolExecutor(1) as ex:
            store = RecordingStore(spec, log)
            await asyncio.wait_for(
                run_strip_job(job, store, ex, box, send, timeout=3600.0),  # type: ignore[arg-type]
                timeout=60.0,  # a hang guard only: the job fails before it waits at all
            )

    with pytest.raises(StripJobError, match=r"halo send failed: neighbour \w+ went away"):
        asyncio.run(main())
    assert any(e.startswith("send") for e in log)
    gc.collect()  # a failed future never retrieved reports itself when collected
    assert unretrieved == []


def test_a_repriced_plan_reuses_its_segments_strip_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale decision answers request after request with its plan priced anew: a new
    ``Plan`` object with the same stages. Its strip jobs are made once, not per request
    (they were, keyed by the plan's identity: ~5 ms on a 0.4-core auctioneer's path)."""
    from dataclasses import replace
    from types import SimpleNamespace

    import edgeci_p2p.aio.stages as stages_mod

    spec, plan = PLANS[0]
    first, last = next((f, lst) for f, lst in segments(plan) if f < lst)
    made: list[int] = []

    def counting(*args: object) -> object:
        made.append(1)
        return strip_jobs(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(stages_mod, "strip_jobs", counting)
    runner = stages_mod.Stages.__new__(stages_mod.Stages)
    runner._jobs = {}
    nodes = [f"n{i}" for i in range(len(plan.devices))]
    runs = [
        SimpleNamespace(spec=spec, plan=replace(plan, predicted=0.5 + k / 10), nodes=nodes)
        for k in range(3)
    ]
    got = [runner._segment_jobs(r, first, last) for r in runs]  # type: ignore[arg-type]
    assert len(made) == 1 and got[0] is got[1] is got[2]
    assert got[0] == strip_jobs(spec, plan, first, last, nodes)
    # Other peers (a peer replaced under the same plan) get jobs of their own.
    other = SimpleNamespace(spec=spec, plan=runs[0].plan, nodes=[*nodes[1:], "new"])
    assert runner._segment_jobs(other, first, last) is not got[0]  # type: ignore[arg-type]
    assert len(made) == 2

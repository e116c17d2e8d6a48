"""Planning aside: a child process makes the same decision the auctioneer would, from
a job of plain JSON values, and the auctioneer keeps it for the next round."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from edgeci_p2p.aio import aside as aio_aside
from edgeci_p2p.aio.aside import AsideError, PlanningAside
from edgeci_p2p.aio.auctioneer import Auctioneer
from edgeci_p2p.aio.plan_peers import PeerPlanning, check_decision
from edgeci_p2p.aio.refresh import Remote
from edgeci_p2p.auction import aside
from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.awas import AwasPlanner, probe_call
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.decider import CachedDecider, Entry, StaticPlanner
from edgeci_p2p.core.density import with_zeros
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.policy.plan_peer import PlanningPeer, answer_within, spare_peer, uses
from edgeci_p2p.wire import messages as wm
from tests.daemons import cluster
from tests.planfakes import fake_testbed


def _round(spec: ModelSpec, slow: float = 1.0) -> tuple[am.CallForBids, list[am.Bid], Bidder]:
    """A call from device 0 of three, and the bids of devices 1 and 2 (``slow``: how
    much slower device 2 runs than its profile)."""
    tb = fake_testbed([4.0, 2.0, 1.0], [50, 50, 50])
    call = probe_call("r", tb.names[0], spec)
    bids = []
    for i in (1, 2):
        d = tb.devices[i]
        compute = d.compute.scaled(1.0 / slow) if i == 2 else d.compute
        b = Bidder(d.name, compute, tb.link(i), d.memory_bytes, horizon=1e6)
        bids.append(b.bid(call, 0.0))
    own = tb.devices[0]
    return call, bids, Bidder(own.name, own.compute, tb.link(0), own.memory_bytes, horizon=1e6)


def _same(a: Entry, b: Entry) -> None:
    assert a[0] == b[0]  # the work items per peer
    assert a[1] is not None and b[1] is not None and a[1].to_dict() == b[1].to_dict()
    assert a[2] is not None and b[2] is not None and a[2].to_dict() == b[2].to_dict()
    assert a[3] == b[3]


def _planners(spec: ModelSpec, own: Bidder) -> list[AwasPlanner | StaticPlanner]:
    return [
        AwasPlanner(spec, own=own.compute, strategy="edgeci"),
        AwasPlanner(spec, own=own.compute, strategy="edgeci-halo"),
        StaticPlanner("aofl", spec, own.compute),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["edgeci", "edgeci-halo", "aofl"])
def test_the_child_decides_as_the_auctioneer_would(which: int) -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    here, there = _planners(spec, own)[which], _planners(spec, own)[which]
    items = here(call, bids)
    direct: Entry = (items, here.plan, here.testbed, dict(getattr(here, "left_out", {})))
    # The job and the answer cross a pipe as JSON lines.
    job = json.loads(json.dumps(aside.job(there, call, bids)))
    answer = json.loads(json.dumps(aside.Child().answer(job)))
    _same(aside.entry(answer), direct)


def test_the_child_plans_the_requests_input_bytes_and_zeros_as_the_auctioneer_does() -> None:
    """The dict form of a spec leaves out what belongs to the request (pixels at a byte
    a value, the zeros measured in its maps); a job carries them. Without, the child
    planned float32 slabs and whole maps for an auctioneer that prices neither."""
    spec = replace(with_zeros(spec_for("vgg11", 64, 64), 0.6), input_itemsize=1)
    call, bids, own = _round(spec)
    here = AwasPlanner(spec, own=own.compute, strategy="edgeci-halo")
    here(call, bids)
    job = json.loads(json.dumps(aside.job(here, call, bids)))
    got = aside.entry(aside.Child().answer(job))
    assert here.plan is not None and got[1] is not None
    assert got[1].to_dict() == here.plan.to_dict()
    whole = AwasPlanner(spec_for("vgg11", 64, 64), own=own.compute, strategy="edgeci-halo")
    whole(call, bids)  # what the child made before: the same rounds, other bytes
    assert whole.plan is not None and whole.plan.predicted != here.plan.predicted


def test_a_job_it_cannot_plan_is_an_error_answer_not_a_dead_child() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    job = aside.job(_planners(spec, own)[0], call, bids)
    child = aside.Child()
    bad = child.answer({**job, "bids": [{"bidder": "x"}]})
    assert "error" in bad
    with pytest.raises(ValueError, match="planning aside failed"):
        aside.entry(bad)
    assert "error" not in child.answer(job)  # and the next job is answered


def test_the_auctioneer_plans_a_stale_round_in_the_child_and_keeps_it() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    moved = _round(spec, slow=1.5)[1]  # device 2 recalibrated: only its speed moved

    async def main() -> None:
        planning = PlanningAside()
        auct = Auctioneer(call.auctioneer, own, send=_no_send, aside=planning)
        decider = CachedDecider(AwasPlanner(spec, own=own.compute, strategy="edgeci-halo"))
        first = decider(call, bids)
        assert decider(call, moved) == first and decider.pending is not None  # stale
        try:
            lock = threading.Lock()
            auct.refresh.later(decider, lock)
            auct.refresh.later(decider, lock)  # one task per decider takes the latest
            assert len(auct.refresh.tasks) == 1
            await asyncio.gather(*auct.refresh.tasks)
            assert planning.jobs == 1 and decider.pending is None
            # The next round with the moved figures is answered from the memo, with
            # what this process's own planner makes of them.
            hits = decider.hits
            got = decider(call, moved)
            assert decider.hits == hits + 1
            mine = AwasPlanner(spec, own=own.compute, strategy="edgeci-halo")
            assert got == mine(call, moved)
        finally:
            await auct.close()

    asyncio.run(main())


def test_a_busy_daemon_plans_only_the_newest_moved_bids_once_the_child_is_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bids that moved twice while the daemon was busy are one job, for the second
    figures: a job made when wanted would plan the first ones, which no round bids any
    more by the time the child can run."""
    monkeypatch.setattr(aio_aside, "LOOK_S", 3600.0)  # only the event wakes the wait
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    moved, newer = _round(spec, slow=1.5)[1], _round(spec, slow=2.0)[1]
    busy = [True]

    async def main() -> None:
        changed = asyncio.Event()
        planning = PlanningAside(busy=lambda: busy[0], changed=changed)
        auct = Auctioneer(call.auctioneer, own, send=_no_send, aside=planning)
        decider = CachedDecider(AwasPlanner(spec, own=own.compute, strategy="edgeci-halo"))
        lock = threading.Lock()
        decider(call, bids)
        try:
            decider(call, moved)
            auct.refresh.later(decider, lock)
            await planning.waiting.wait()  # the daemon is busy: nothing made yet
            assert decider.pending is not None and decider.pending[1] == tuple(moved)
            decider(call, newer)  # moved again meanwhile: the pending round is the newest
            auct.refresh.later(decider, lock)
            assert len(auct.refresh.tasks) == 1
            busy[0] = False
            changed.set()
            await asyncio.gather(*auct.refresh.tasks)
            assert planning.jobs == 1 and auct.refresh.planned == 1
            assert decider.pending is None and not auct.refresh.wanted
            hits = decider.hits
            mine = AwasPlanner(spec, own=own.compute, strategy="edgeci-halo")
            assert decider(call, newer) == mine(call, newer)  # made for the newest bids
            assert decider.hits == hits + 1
            stale = decider.stale
            decider(call, moved)  # the first figures were never planned
            assert decider.stale == stale + 1
        finally:
            await auct.close()

    asyncio.run(main())


def test_without_a_child_it_plans_in_a_thread() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    moved = _round(spec, slow=1.5)[1]

    async def main() -> None:
        planning = PlanningAside([sys.executable, "-c", "import sys; sys.exit(3)"])
        with pytest.raises(AsideError):
            await planning.decide(aside.job(_planners(spec, own)[0], call, bids))
        assert planning.broken is not None and "did not start" in planning.broken
        auct = Auctioneer(call.auctioneer, own, send=_no_send, aside=planning)
        decider = CachedDecider(AwasPlanner(spec, own=own.compute, strategy="edgeci"))
        decider(call, bids)
        decider(call, moved)
        auct.refresh.later(decider, threading.Lock())
        await asyncio.gather(*auct.refresh.tasks)
        assert decider.pending is None and decider.misses == 2  # planned, here
        assert decider(call, moved) is not None and decider.hits == 1
        await auct.close()

    asyncio.run(main())


def test_the_child_can_be_started_before_any_job_and_is_the_one_jobs_use() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)

    async def main() -> None:
        planning = PlanningAside()
        await planning.start()
        try:
            started = planning._proc
            assert started is not None and planning.broken is None and planning.jobs == 0
            await planning.decide(aside.job(_planners(spec, own)[0], call, bids))
            assert planning._proc is started and planning.jobs == 1
        finally:
            await planning.close()
        # A child that cannot start: start() says so in ``broken`` and raises nothing.
        bad = PlanningAside([sys.executable, "-c", "import sys; sys.exit(3)"])
        await bad.start()
        assert bad.broken is not None and "did not start" in bad.broken

    asyncio.run(main())


async def _no_send(peer: str, msg: object) -> bool:
    return False


def test_a_bid_round_trips_through_the_job() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    bids = [replace(bids[0], piece_s=0.003, backlog=0.25), *bids[1:]]
    job = json.loads(json.dumps(aside.job(StaticPlanner("aofl", spec, own.compute), call, bids)))
    assert [am.Bid.from_dict(b) for b in job["bids"]] == bids
    assert am.CallForBids.from_dict(job["call"]) == call


async def _stopped(pid: int) -> bool:
    """Whether child ``pid`` is stopped, once it is (``waitid`` without reaping it)."""
    got = await asyncio.to_thread(os.waitid, os.P_PID, pid, os.WSTOPPED | os.WNOWAIT)
    return got is not None and got.si_code == os.CLD_STOPPED


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs waitid")
@pytest.mark.parametrize("signalled", [False, True], ids=["polled", "signalled"])
def test_the_child_is_stopped_while_the_daemon_is_busy_and_goes_on_after(
    signalled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polled (no event), or woken by the daemon's ``Load.changed`` as the daemon runs it
    (then only the event wakes it: no look-again timer could end this test)."""
    monkeypatch.setattr(aio_aside, "LOOK_S", 3600.0)
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    job = aside.job(_planners(spec, own)[1], call, bids)
    busy = [True]

    async def main() -> None:
        changed = asyncio.Event() if signalled else None
        planning = PlanningAside(busy=lambda: busy[0], changed=changed)
        try:
            deciding = asyncio.ensure_future(planning.decide(job))
            await planning.held.wait()
            assert planning._proc is not None
            assert await _stopped(planning._proc.pid)  # by SIGSTOP
            assert not deciding.done()
            busy[0] = False  # the request ended: the child goes on
            if changed is not None:
                changed.set()
            got = await asyncio.wait_for(deciding, 60)
            assert not planning.held.is_set() and got[1] is not None
        finally:
            await planning.close()

    asyncio.run(main())


def test_a_job_held_past_its_patience_runs_anyway() -> None:
    assert aside.hold(True, since=0.0, now=1.0, patience_s=30.0)
    assert not aside.hold(True, since=0.0, now=30.0, patience_s=30.0)
    assert not aside.hold(False, since=0.0, now=1.0, patience_s=30.0)


def test_a_stale_plan_runs_priced_on_the_new_figures() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    moved = _round(spec, slow=1.3)[1]  # device 2 now runs 1.3x its profile's times
    cached = CachedDecider(AwasPlanner(spec, own=own.compute, strategy="edgeci-halo"))
    cached(call, bids)
    old, old_tb = cached.plan, cached.testbed
    assert old is not None and old_tb is not None and old.predicted is not None
    cached(call, moved)
    stale, stale_tb = cached.plan, cached.testbed
    assert cached.stale == 1 and stale is not None and stale_tb is not None
    # The same plan, at the price a planner puts on it now; its testbed says so too.
    assert stale.stages == old.stages and stale.devices == old.devices
    assert stale.predicted is not None and stale.predicted > old.predicted
    fresh = AwasPlanner(spec, own=own.compute, strategy="edgeci-halo")
    assert fresh.reprice(old, call, bids) == (old, old_tb)  # on its own bids: unchanged
    assert fresh.reprice(old, call, moved) == (stale, stale_tb)
    slow = stale_tb.names.index(bids[1].bidder)
    assert stale_tb.devices[slow] != old_tb.devices[slow]


def test_the_child_keeps_one_planner_per_kind_and_takes_the_new_own_model() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    child = aside.Child()
    first = aside.job(AwasPlanner(spec, own=own.compute, strategy="edgeci"), call, bids)
    slower = own.compute.scaled(0.5)
    second = aside.job(AwasPlanner(spec, own=slower, strategy="edgeci"), call, bids)
    assert "error" not in child.answer(first) and "error" not in child.answer(second)
    (planner,) = child._planners.values()  # one kind of request: one planner
    assert isinstance(planner, AwasPlanner) and planner.own == slower


def test_a_daemon_wakes_its_planning_child_on_its_own_load() -> None:
    """The child is started with the daemon, and its feeder waits on the node's
    ``Load.changed`` (set where the counters that ``busy()`` reads change), not on a
    timer."""
    from tests.daemons import start_daemons, stop_all

    async def main() -> None:
        (d,) = await start_daemons(1, plan_aside=True)
        try:
            planning = d.auctioneer.refresh.aside
            assert planning is not None and planning.changed is d.load.changed
            assert planning._proc is not None  # started with the daemon, not in a request
            d.load.changed.clear()
            assert await d.parts.serving._admitted(None, "r", "tile")  # type: ignore[arg-type]
            assert d.load.changed.is_set() and planning.busy()
            d.load.changed.clear()
            d.parts.serving._done()
            assert d.load.changed.is_set() and not planning.busy()
        finally:
            await stop_all([d])

    asyncio.run(main())


# Says it is ready, then ends at its first job without answering.
_DIES_AT_ITS_JOB = (
    "import json, sys; print(json.dumps({'ready': 'test'}), flush=True); "
    "sys.stdin.readline(); sys.exit(5)"
)


def test_a_child_that_dies_in_a_job_is_replaced_and_says_how_it_ended() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    job = aside.job(_planners(spec, own)[0], call, bids)

    async def main() -> None:
        # A real child killed between jobs: the next job gets a new one, which answers.
        planning = PlanningAside()
        try:
            await planning.decide(job)
            first = planning._proc
            assert first is not None
            first.kill()
            await first.wait()
            with pytest.raises(AsideError, match=r"killed by SIGKILL|Broken pipe"):
                await planning.decide(job)
            assert planning.broken is None and planning.deaths == 1
            await planning.decide(job)
            assert planning._proc is not None and planning._proc is not first
            assert planning.jobs == 2
        finally:
            await planning.close()
        # Children that keep dying: replaced MAX_RESTARTS times, then it plans in a thread.
        dying = PlanningAside([sys.executable, "-c", _DIES_AT_ITS_JOB])
        for _ in range(aio_aside.MAX_RESTARTS):
            with pytest.raises(AsideError, match=r"exited \(status 5\)"):
                await dying.decide(job)
            assert dying.broken is None
        with pytest.raises(AsideError, match=r"status 5"):
            await dying.decide(job)
        assert dying.broken is not None and "4 children died" in dying.broken
        with pytest.raises(AsideError):  # and stays so
            await dying.decide(job)

    asyncio.run(main())


def test_pieces_timed_while_the_child_plans_are_not_calibrated_on() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    job = aside.job(_planners(spec, own)[0], call, bids)
    now = [100.0]

    async def main() -> None:
        # Busy, and out of patience at once: the child plans beside the daemon's work.
        planning = PlanningAside(busy=lambda: True, patience_s=0.0, clock=lambda: now[0])
        try:
            assert not planning.disturbing(10.0)
            await planning.decide(job)
            assert not planning.running and planning.ran_until == 100.0
            now[0] += 0.5
            assert planning.disturbing(0.6)  # a piece that began before the child stopped
            assert not planning.disturbing(0.4)  # one that began after
            # Held for the whole job (patient, the daemon busy): it never disturbed.
            patient = PlanningAside(busy=lambda: True, patience_s=1e9, clock=lambda: now[0])
            got = asyncio.ensure_future(patient.decide(job))
            await patient.held.wait()
            assert not patient.running and not patient.disturbing(10.0)
            got.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await got
            await patient.close()
        finally:
            await planning.close()

    asyncio.run(main())


# ---- on a peer (plan_job) -------------------------------------------------------------------


def test_a_stale_round_is_planned_on_a_peer_and_the_own_child_stays_idle() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    moved = _round(spec, slow=1.5)[1]

    async def main() -> None:
        planning, peers_child = PlanningAside(), PlanningAside()
        auct = Auctioneer(call.auctioneer, own, send=_no_send, aside=planning)
        asked: list[str] = []

        async def decide(peer: str, decider: CachedDecider, job: dict[str, Any]) -> Entry:
            asked.append(peer)
            # What a peer does with it (aio/plan_peers.py): its child's decision, as JSON.
            hit = await peers_child.decide(json.loads(json.dumps(job)))
            return aside.entry(json.loads(json.dumps(aside.answer_of(hit))))

        auct.refresh.remote = Remote(lambda decider: bids[1].bidder, decide)
        decider = CachedDecider(AwasPlanner(spec, own=own.compute, strategy="edgeci-halo"))
        decider(call, bids)
        decider(call, moved)
        try:
            auct.refresh.later(decider, threading.Lock())
            await asyncio.gather(*auct.refresh.tasks)
            assert asked == [bids[1].bidder]
            assert auct.refresh.planned_on_peers == 1 == auct.refresh.planned
            assert planning.jobs == 0 and peers_child.jobs == 1 and decider.pending is None
            mine = AwasPlanner(spec, own=own.compute, strategy="edgeci-halo")
            assert decider(call, moved) == mine(call, moved)  # the peer's, from the memo
        finally:
            await auct.close()
            await peers_child.close()

    asyncio.run(main())


def test_a_peer_that_cannot_plan_it_leaves_the_job_to_the_own_child() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    moved = _round(spec, slow=1.5)[1]

    async def main() -> None:
        planning = PlanningAside()
        auct = Auctioneer(call.auctioneer, own, send=_no_send, aside=planning)

        async def decide(peer: str, decider: CachedDecider, job: dict[str, Any]) -> Entry:
            raise AsideError("the peer did not answer in 20 s")

        auct.refresh.remote = Remote(lambda decider: bids[1].bidder, decide)
        decider = CachedDecider(AwasPlanner(spec, own=own.compute, strategy="edgeci"))
        decider(call, bids)
        decider(call, moved)
        try:
            auct.refresh.later(decider, threading.Lock())
            await asyncio.gather(*auct.refresh.tasks)
            # The same round (the pending one was taken once), planned here.
            assert planning.jobs == 1 and auct.refresh.planned_on_peers == 0
            assert decider.pending is None and auct.refresh.planned == 1
            mine = AwasPlanner(spec, own=own.compute, strategy="edgeci")
            assert decider(call, moved) == mine(call, moved)
        finally:
            await auct.close()

    asyncio.run(main())


def test_the_peer_asked_is_the_fastest_one_the_plan_leaves_out_else_the_fastest_it_uses() -> None:
    spec = spec_for("vgg16", 224, 224)
    tb = load_testbed("emulated-4-headroom")
    me = tb.names[tb.auctioneer]
    others = set(tb.names) - {me}

    def speed(n: str) -> float:
        return tb.devices[tb.names.index(n)].compute.seconds("conv", 1e9)

    fastest = min(others, key=speed)
    # One left out is all spare: the fastest of those.
    alone = plan("local", spec, tb)
    assert spare_peer(alone, tb, others, me) == PlanningPeer(fastest, in_plan=False)
    second = spare_peer(alone, tb, others - {fastest}, me)
    assert second is not None and second.name not in (fastest, me) and not second.in_plan
    # Its head device is used too: another, idle one is asked first.
    head = replace(alone, head_device=tb.names.index(fastest))
    got = spare_peer(head, tb, others, me)
    assert got is not None and got.name != fastest and not got.in_plan
    assert uses(head, fastest) and not uses(alone, fastest) and uses(alone, me)
    # A plan that uses every peer: the fastest other one all the same (its child holds
    # the job while it serves work), given its patience on top to answer.
    halo = plan("edgeci-halo", spec, tb)
    if all(uses(halo, n) for n in tb.names):
        asked = spare_peer(halo, tb, others, me)
        assert asked == PlanningPeer(fastest, in_plan=True)
        assert answer_within(asked, 20.0, 30.0) == 50.0
    assert answer_within(PlanningPeer(fastest, in_plan=False), 20.0, 30.0) == 20.0
    # Only bidders of the round; never this node.
    assert spare_peer(alone, tb, {me}, me) is None
    assert spare_peer(None, None, others, me) is None


def test_a_peers_plan_is_kept_only_if_it_plans_this_model_on_the_rounds_bidders() -> None:
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    planner = AwasPlanner(spec, own=own.compute, strategy="edgeci-halo")
    items = planner(call, bids)
    assert planner.plan is not None and planner.testbed is not None
    good: Entry = (items, planner.plan, planner.testbed, {})
    bidders = frozenset(planner.plan.devices)
    check_decision(good, spec, bidders, "p")
    with pytest.raises(AsideError, match="did not bid"):
        check_decision(good, spec, bidders - {planner.plan.devices[-1]}, "p")
    other = spec_for("vgg16", 64, 64)
    with pytest.raises(AsideError, match="not a plan of this model"):
        check_decision(good, other, bidders, "p")
    with pytest.raises(AsideError, match="no plan"):
        check_decision((items, None, None, {}), spec, bidders, "p")


@pytest.mark.timeout(120)
def test_a_plan_job_crosses_the_wire_and_comes_back_checked() -> None:
    spec = spec_for("vgg11", 64, 64)

    async def main() -> None:
        async with cluster(2) as (a, b):
            tb = fake_testbed([4.0, 2.0], [50, 50])
            call = probe_call("r", a.node_id, spec)
            d = tb.devices[1]
            bid = Bidder(b.node_id, d.compute, tb.link(1), d.memory_bytes, horizon=1e6)
            bids = [bid.bid(call, 0.0)]
            own = tb.devices[0].compute
            job = aside.job(AwasPlanner(spec, own=own, strategy="edgeci-halo"), call, bids)
            bidders = frozenset({a.node_id, b.node_id})
            hit = await a.parts.planners.decide(b.node_id, job, spec, bidders)
            assert b.parts.planners.served == 1 and a.parts.planners.sent == 1
            mine = AwasPlanner(spec, own=own, strategy="edgeci-halo")
            assert hit[0] == mine(call, bids) and hit[1] is not None
            assert set(hit[1].devices) <= bidders
            # A job the peer cannot read is an error answer, and the connection stays.
            with pytest.raises(AsideError, match="could not plan it"):
                await a.parts.planners.decide(b.node_id, {"kind": "?"}, spec, bidders)
            assert b.node_id in a.parts.mesh.conns

    asyncio.run(main())


def test_with_no_peer_to_ask_the_job_waits_for_the_own_child_and_plans_the_newest_bids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aio_aside, "LOOK_S", 3600.0)  # only the event wakes the wait
    spec = spec_for("vgg11", 64, 64)
    call, bids, own = _round(spec)
    moved, newer = _round(spec, slow=1.5)[1], _round(spec, slow=2.0)[1]
    busy = [True]

    async def main() -> None:
        changed = asyncio.Event()
        planning = PlanningAside(busy=lambda: busy[0], changed=changed)
        auct = Auctioneer(call.auctioneer, own, send=_no_send, aside=planning)

        async def decide(peer: str, decider: CachedDecider, job: dict[str, Any]) -> Entry:
            raise AssertionError("no peer was picked")

        auct.refresh.remote = Remote(lambda decider: None, decide)
        decider = CachedDecider(AwasPlanner(spec, own=own.compute, strategy="edgeci-halo"))
        decider(call, bids)
        try:
            decider(call, moved)
            auct.refresh.later(decider, threading.Lock())
            await planning.waiting.wait()  # held: no job made yet
            decider(call, newer)
            busy[0] = False
            changed.set()
            await asyncio.gather(*auct.refresh.tasks)
            mine = AwasPlanner(spec, own=own.compute, strategy="edgeci-halo")
            assert decider(call, newer) == mine(call, newer)  # made for the newest bids
            assert auct.refresh.planned_on_peers == 0 and planning.jobs == 1
        finally:
            await auct.close()

    asyncio.run(main())


def test_plan_jobs_are_taken_from_peers_only() -> None:
    sent: list[Any] = []

    class Conn:
        peer = SimpleNamespace(role="client", node_id="c")

        async def send(self, msg: Any) -> None:
            sent.append(msg)

    async def main() -> None:
        planning = PlanningAside()
        served = PeerPlanning(None, None, planning)  # type: ignore[arg-type]
        try:
            await served._serve(Conn(), wm.PlanJob("j1", "{}"))  # type: ignore[arg-type]
        finally:
            await planning.close()
        assert served.served == 0 and planning.jobs == 0
        assert sent[0].job_id == "j1" and "from peers" in sent[0].error

    asyncio.run(main())

"""AWAS + DPFL: bids become device models, DPFL plans with them, the auction places
strips and re-plans without a peer that backs out; the dynamic-load simulation."""

from __future__ import annotations

import itertools
import random
from functools import cache

import pytest

from edgeci_p2p.auction.awas import (
    AwasPlanner,
    compute_from_bid,
    place_strips,
    predict_with_backlog,
    probe_call,
    strip_items,
)
from edgeci_p2p.auction.awas import testbed_from_bids as derive_testbed
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.messages import Award, AwardReply
from edgeci_p2p.auction.round import AuctionRound, Phase
from edgeci_p2p.core.cost import Testbed as Cluster
from edgeci_p2p.core.plan import Plan, validate
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import Workload
from edgeci_p2p.planners import plan
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.dpfl import plan_edgeci
from edgeci_p2p.scenarios.dynamic_load import Calendar, Scenario, dynamic_load
from tests.planfakes import fake_testbed


@cache
def small_spec() -> ModelSpec:
    from edgeci_p2p.nn.spec import spec_for

    return spec_for("vgg11", 64, 64)


def bidders_for(tb: Cluster, backlog: dict[str, float] | None = None) -> dict[str, Bidder]:
    out = {}
    for i, d in enumerate(tb.devices):
        b = Bidder(d.name, d.compute, tb.link(i), d.memory_bytes, horizon=1e6)
        b.add_work((backlog or {}).get(d.name, 0.0), 0.0)
        out[d.name] = b
    return out


def test_bids_reveal_each_peers_fitted_model_exactly() -> None:
    spec = small_spec()
    tb = fake_testbed([2.0, 5.0, 1.0], [50, 100, 20])
    call = probe_call("r", tb.names[0], spec)
    for name, b in bidders_for(tb).items():
        got = compute_from_bid(b.bid(call, 0.0), call)
        want = b.compute
        for kind, fit in got.fits.items():
            assert fit.a == pytest.approx(want.fits[kind].a, rel=1e-9)
            assert fit.b == pytest.approx(want.fits[kind].b, rel=1e-6, abs=1e-12), name


def test_idle_bids_give_the_plan_of_the_true_testbed() -> None:
    spec = small_spec()
    tb = fake_testbed([2.0, 5.0, 1.0, 3.0], [50, 100, 20, 80])
    call = probe_call("r", tb.names[0], spec)
    bids = [b.bid(call, 0.0) for b in bidders_for(tb).values()]
    derived, left = derive_testbed(call, bids, span=1.0)
    assert left == {}
    ours = plan_edgeci(spec, derived).predicted
    truth = plan_edgeci(spec, tb).predicted
    assert ours == pytest.approx(truth, rel=1e-6)


def _awarded_seconds(backlog: float) -> dict[str, float]:
    from edgeci_p2p.nn.spec import spec_for

    spec = spec_for("resnet18", 64, 64)  # a small head: the strips are the work
    tb = fake_testbed([4.0, 4.0, 4.0], [1000, 1000, 1000], rtt_ms=0.1)
    peers = bidders_for(tb, {"d2": backlog})
    call = probe_call("r", "d0", spec)
    r = AuctionRound(call, frozenset(peers), decide=AwasPlanner(spec))
    r.start(0.0)
    for b in peers.values():
        r.receive_bid(b.bid(call, 0.0), 0.001)
    assert r.phase is Phase.AWARDING
    return {p: sum(peers[p].compute_seconds(it) for it in aw.items) for p, aw in r.awards.items()}


def test_through_dpfl_a_backlogged_peer_gets_less_work() -> None:
    # Three identical peers (d0 the auctioneer); d2 has queued work. Peers run their
    # queue first, so DPFL's share for d2 can only shrink as its queue grows, and a
    # queue as long as the request (about 50 ms here) keeps it out of the plan.
    idle = _awarded_seconds(0.0)
    assert idle["d2"] > 0
    shares = [_awarded_seconds(b).get("d2", 0.0) for b in (0.002, 0.01, 0.05, 0.2)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise([idle["d2"], *shares]))
    assert shares[2] < idle["d2"]
    assert shares[3] == 0.0
    away = _awarded_seconds(0.2)
    assert away["d0"] + away["d1"] > idle["d0"] + idle["d1"]  # its share moved to the others


def test_placed_plans_are_valid_and_never_slower() -> None:
    spec = small_spec()
    rnd = random.Random(11)
    for _ in range(6):
        n = rnd.randint(2, 5)
        tb = fake_testbed(
            [rnd.uniform(0.5, 8) for _ in range(n)], [rnd.uniform(20, 300) for _ in range(n)]
        )
        ctx = Context(spec, tb)
        base = plan("edgeci", spec, tb, ctx)
        placed = place_strips(base, ctx)
        validate(placed, spec)
        assert placed.predicted is not None and base.predicted is not None
        assert placed.predicted <= base.predicted * (1 + 1e-9)
        assert simulate(placed, spec, tb, record=False).latency == pytest.approx(
            placed.predicted, rel=1e-9
        )


def test_prediction_with_no_backlog_is_the_simulators() -> None:
    spec = small_spec()
    tb = fake_testbed([2.0, 5.0, 1.0], [50, 100, 20])
    work = Workload(spec)
    for strategy in ("edgeci", "aofl", "modnn"):
        p = plan(strategy, spec, tb)
        sim = simulate(p, spec, tb, work, record=False).latency
        assert predict_with_backlog(p, spec, tb, {}, work) == pytest.approx(sim, rel=1e-9)
        later = predict_with_backlog(p, spec, tb, {n: 0.5 for n in tb.names}, work)
        # Everyone busy for 0.5 s first: slower, but by no more than the 0.5 s
        # (slabs still travel while the peers finish their queues).
        assert sim < later <= sim + 0.5 + 1e-9


def test_strip_items_cover_the_plan() -> None:
    spec = small_spec()
    tb = fake_testbed([2.0, 5.0, 1.0], [50, 100, 20])
    p = plan("edgeci", spec, tb)
    items = strip_items(p, spec)
    assert set(items) <= set(tb.names)
    assert sum(len(v) for v in items.values()) == sum(len(s.parts) for s in p.stages)
    total = sum(f for v in items.values() for it in v for f in it.flops.values())
    assert total >= sum(st.stop - st.start for st in p.stages)  # every unit did some work


def test_a_peer_backing_out_is_planned_around() -> None:
    # d1 bids idle, then is promised to another auctioneer before our award lands:
    # it declines ours as stale, and the round re-plans without it.
    spec = small_spec()
    tb = fake_testbed([1.0, 8.0, 4.0], [1000, 1000, 1000], rtt_ms=0.1)
    peers = bidders_for(tb)
    call = probe_call("r", "d0", spec)
    planner = AwasPlanner(spec)
    r = AuctionRound(call, frozenset(peers), decide=planner)
    r.start(0.0)
    sends = []
    for b in peers.values():
        sends += r.receive_bid(b.bid(call, 0.0), 0.001)
    assert planner.plan is not None and "d1" in {
        planner.plan.devices[p.device] for st in planner.plan.stages for p in st.parts
    }
    other = next(s.message for s in sends if s.to == "d1")
    assert isinstance(other, Award)
    assert peers["d1"].accept(Award("elsewhere", "d1", other.items * 3), 0.002).accepted
    for s in sends:
        reply = peers[s.to].accept(s.message, 0.003)  # type: ignore[arg-type]
        sends2 = r.receive_reply(
            AwardReply(reply.auction_id, reply.bidder, reply.seq, reply.accepted, reply.reason),
            0.003,
        )
        for s2 in sends2:
            if isinstance(s2.message, Award):
                assert s2.to != "d1"
                assert r.receive_reply(peers[s2.to].accept(s2.message, 0.004), 0.004) == []
    assert "d1" in r.excluded and "stale" in r.excluded["d1"]
    assert "d1" not in r.awards
    used = {planner.plan.devices[p.device] for st in planner.plan.stages for p in st.parts}
    assert "d1" not in used
    validate(planner.plan, spec)


def test_calendar_books_without_overlap() -> None:
    rnd = random.Random(4)
    cal = Calendar()
    booked = []
    for _ in range(300):
        start = cal.reserve(rnd.uniform(0, 50), rnd.uniform(0, 2))
        booked.append(start)
    spans = list(zip(cal.starts, cal.stops, strict=True))
    assert spans == sorted(spans)
    assert all(b <= c + 1e-12 for (_, b), (c, _) in itertools.pairwise(spans))
    assert cal.busy_after(0.0) == pytest.approx(sum(b - a for a, b in spans))


def test_dynamic_load_rows() -> None:
    spec = small_spec()
    tb = fake_testbed([2.0, 5.0, 1.0], [50, 100, 20])
    sc = Scenario(requests=5, seeds=1)
    rows = dynamic_load(spec, tb, plan, ("edgeci", "aofl"), sc)
    assert [r["strategy"] for r in rows] == ["edgeci", "aofl"]
    for r in rows:
        assert set(r) == {"model", "testbed", "strategy", "mean_ms", "p50_ms", "p95_ms"}
        assert 0 < r["p50_ms"] <= r["p95_ms"]
        assert (r["model"], r["testbed"]) == (spec.name, tb.name)
    # Same seed, same arrivals and background: the run is reproducible.
    assert dynamic_load(spec, tb, plan, ("edgeci", "aofl"), sc) == rows


def test_bench_command_output_forms() -> None:
    import json

    from edgeci_p2p.nn.spec import spec_for
    from edgeci_p2p.scenarios.dynamic_load import run_command

    sc = Scenario(requests=3, seeds=1)
    out = run_command(
        ["resnet18"], ["homog-4"], ["edgeci", "aofl"], True, lambda m: spec_for(m, 64, 64), sc
    )
    rows = json.loads(out)
    assert [(r["model"], r["testbed"], r["strategy"]) for r in rows] == [
        ("resnet18", "homog-4", "edgeci"),
        ("resnet18", "homog-4", "aofl"),
    ]
    text = run_command(["resnet18"], ["homog-4"], None, False, lambda m: spec_for(m, 64, 64), sc)
    assert "edgeci" in text and "modnn" in text and "p95 ms" in text


def test_backlogged_peer_gets_an_edge_strip() -> None:
    # Three identical remote peers split a block into equal strips; the middle strip
    # reads halo on both sides, so it is the costliest. With d1 (in the middle)
    # busy first, the backlog-aware placement moves d1 to an edge strip.
    from edgeci_p2p.core.plan import strip_stage

    spec = small_spec()
    tb = fake_testbed([1.0, 4.0, 4.0, 4.0], [1000, 1000, 1000, 1000], rtt_ms=0.1)
    ctx = Context(spec, tb)
    h = spec.shape_at(4)[1]
    stage = strip_stage(spec, 0, 4, [h // 3, 2 * h // 3], [2, 1, 3])
    rest = [ctx.single_stage(4, spec.n_units, 0)]
    base = ctx.make_plan("edgeci", [stage, *rest])
    work = Workload(spec)
    backlog = {"d1": 0.01}

    def judge(p: object) -> float:
        return predict_with_backlog(p, spec, tb, backlog, work)  # type: ignore[arg-type]

    placed = place_strips(base, ctx, [0.0, 0.01, 0.0, 0.0], judge)
    validate(placed, spec)
    order = [p.device for p in sorted(placed.stages[0].parts, key=lambda p: p.region.rows.start)]
    assert order[1] != 1 and 1 in order
    assert judge(placed) < judge(base)


def count_planner_runs(planner: AwasPlanner) -> list[str]:
    """The names of the clusters ``planner`` runs its strategy's planner on, from now."""
    runs: list[str] = []
    inner = planner._planner

    def counting(ctx: Context) -> Plan:
        runs.append(ctx.testbed.name)
        return inner(ctx)

    planner._planner = counting  # type: ignore[method-assign]
    return runs


def test_a_still_good_plan_is_kept_and_a_changed_cluster_replanned() -> None:
    spec = small_spec()
    planner = AwasPlanner(spec)
    runs = count_planner_runs(planner)

    def decide(gflops: list[float], auction: str) -> None:
        tb = fake_testbed(gflops, [50, 100, 20, 80])
        call = probe_call(auction, tb.names[0], spec)
        planner.plan_from_bids(call, [b.bid(call, 0.0) for b in bidders_for(tb).values()])

    decide([2.0, 5.0, 1.0, 3.0], "a")
    first = len(runs)
    assert first >= 1
    decide([2.0, 5.0, 1.0, 3.02], "b")  # measurement noise: the same plan, no planner run
    assert len(runs) == first
    decide([2.0, 1.0, 1.0, 3.0], "c")  # the fastest peer slowed down 5x: plan again
    assert len(runs) > first


def test_a_busy_entry_peer_sends_the_frame_to_idle_ones() -> None:
    # A stream: the auctioneer d0 is busy with earlier frames, d1 and d2 are idle.
    # The frame goes to the idle peers (whole, or shared between them) rather than
    # waiting for d0's queue.
    spec = small_spec()
    tb = fake_testbed([4.0, 4.0, 4.0], [1000, 1000, 1000], rtt_ms=0.1)
    call = probe_call("r", "d0", spec)
    busy = bidders_for(tb, {"d0": 5.0})
    plan_ = AwasPlanner(spec).plan_from_bids(call, [b.bid(call, 0.0) for b in busy.values()])
    used = {plan_.devices[p.device] for st in plan_.stages for p in st.parts}
    assert "d0" not in used, plan_
    validate(plan_, spec)
    # Idle, the same cluster shares the frame out instead.
    idle = bidders_for(tb)
    plan_ = AwasPlanner(spec).plan_from_bids(call, [b.bid(call, 0.0) for b in idle.values()])
    assert len({p.device for st in plan_.stages for p in st.parts}) > 1


def test_an_idle_cluster_is_planned_once_and_to_the_same_plan() -> None:
    """With no backlog anywhere, the share-model cluster is the idle cluster: the plan
    already made is reused (a planner run costs seconds on a slow entry peer)."""
    spec = small_spec()
    tb = fake_testbed([2.0, 5.0, 1.0, 3.0], [50, 100, 20, 80])
    call = probe_call("a", tb.names[0], spec)

    def counted(planner: AwasPlanner, backlog: dict[str, float] | None) -> tuple[Plan, int]:
        runs = count_planner_runs(planner)
        bids = [b.bid(call, 0.0) for b in bidders_for(tb, backlog).values()]
        return planner.plan_from_bids(call, bids), len(runs)

    plan_, runs = counted(AwasPlanner(spec), None)
    assert runs == 1
    # The same plan as planning the share-model cluster afresh.
    bids = [b.bid(call, 0.0) for b in bidders_for(tb).values()]
    fresh = AwasPlanner(spec)
    again, _, _ = fresh._plan(call, bids, 1.0, {}, lambda p: 0.0)
    assert plan_ == again
    # A queue somewhere makes the share-model cluster differ: both are planned.
    _, runs = counted(AwasPlanner(spec), {tb.names[1]: 0.05})
    assert runs >= 2

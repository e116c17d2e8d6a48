"""The auctioneer's event loop's share of its CPU, learnt per strategy from its own
requests and charged to its own bid in that strategy's rounds (policy/loop_share.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from edgeci_p2p.auction import decider
from edgeci_p2p.auction.awas import AwasPlanner, compute_from_bid, probe_call
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.nn.images import decode, to_input
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.policy.loop_share import LoopShare, with_compute_factor
from edgeci_p2p.wire.messages import InferRequest
from tests.daemons import IMAGE, cluster, start_daemons, stop_all
from tests.planfakes import fake_testbed


def test_the_share_is_learnt_per_strategy_after_the_cold_requests() -> None:
    ls = LoopShare()
    # The first two of a strategy are cold and left out.
    assert ls.observe("edgeci-halo", 0.2, 0.5, 0.4) is None
    assert ls.observe("edgeci-halo", 0.2, 0.5, 0.4) is None
    # 48 ms of the loop's CPU over 600 ms on a 0.4-core quota: 20% of its CPU.
    assert ls.observe("edgeci-halo", 0.048, 0.6, 0.4) == pytest.approx(0.2)
    assert ls.factor("edgeci-halo") == pytest.approx(1.25)
    assert ls.factor("edgeci") == 1.0  # another strategy has its own share


def test_the_share_moves_past_its_band_onto_its_grid_and_stays_bounded() -> None:
    ls = LoopShare(skip=0)
    assert ls.observe("s", 0.048, 0.6, 0.4) == pytest.approx(0.2)
    assert ls.observe("s", 0.060, 0.6, 0.4) is None  # 0.25 moves the mean to 0.215
    got = None
    for _ in range(10):
        got = ls.observe("s", 10.0, 0.6, 0.4) or got  # a stalled loop: capped
    assert got is not None and got <= ls.highest
    assert round(got / ls.grid) * ls.grid == pytest.approx(got)


def test_a_loop_with_cores_of_its_own_costs_the_work_nothing() -> None:
    ls = LoopShare(skip=0)
    assert ls.observe("s", 0.05, 0.5, None) is None
    assert ls.observe("s", 0.05, 0.5, 2.0) is None
    assert ls.factor("s") == 1.0


def test_the_own_bid_prices_its_compute_but_not_its_head_so_many_times() -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([4.0, 2.0], [50, 50])
    call = probe_call("r", tb.names[0], spec)
    d = tb.devices[0]
    bid = Bidder(d.name, d.compute, tb.link(0), d.memory_bytes, horizon=1e6).bid(call, 0.0)
    slowed = with_compute_factor(bid, 1.25)
    assert with_compute_factor(bid, 1.0) is bid
    for item, seconds in bid.duration.items():
        want = seconds if item.startswith("probe:head:") else seconds * 1.25
        assert slowed.duration[item] == pytest.approx(want)
    fast, slow = compute_from_bid(bid, call), compute_from_bid(slowed, call)
    assert slow.seconds("conv", 1e9) == pytest.approx(1.25 * fast.seconds("conv", 1e9))


def test_a_charged_auctioneer_gets_less_of_the_map_and_a_longer_prediction() -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([2.0, 2.0, 2.0], [50, 50, 50])
    call = probe_call("r", tb.names[0], spec)
    bids = [
        Bidder(d.name, d.compute, tb.link(i), d.memory_bytes, horizon=1e6).bid(call, 0.0)
        for i, d in enumerate(tb.devices)
    ]
    plans: list[Plan] = []
    for factor in (1.0, 1.5):
        planner = AwasPlanner(spec, strategy="edgeci")
        planner(call, [with_compute_factor(bids[0], factor), *bids[1:]])
        assert planner.plan is not None
        plans.append(planner.plan)
    free, charged = plans

    def auctioneers_share(plan: Plan) -> float:
        """The auctioneer's fraction of the output rows, over every stage."""
        rows = [(p.device, p.region.rows.size) for st in plan.stages for p in st.parts]
        return sum(n for d, n in rows if d == plan.auctioneer) / sum(n for _, n in rows)

    assert free.predicted is not None and charged.predicted is not None
    assert charged.predicted > free.predicted
    assert auctioneers_share(charged) < auctioneers_share(free)


def test_a_daemon_learns_it_from_its_requests_and_prices_its_own_bid_with_it() -> None:
    async def main() -> None:
        (d,) = await start_daemons(1, calibrate_speed=True)
        try:
            d.node.one_cpu = 0.4  # the loop shares a 0.4-core quota with the work
            for _ in range(3):  # two cold requests, then one that counts
                d.node.ran("edgeci-halo", 0.048, 0.6)
            assert d.node.loop_share.factor("edgeci-halo") == pytest.approx(1.25)
            call = probe_call("r", d.node.node_id, d.node.store.spec("resnet34", 224, 224))
            own = d.node.bidder.bid(call, 0.0)
            other = replace(own, bidder="someone else")
            desk = d.parts.desk
            conv = "probe:conv:1"
            assert desk._priced(own, "edgeci-halo").duration[conv] == pytest.approx(
                1.25 * own.duration[conv]
            )
            assert desk._priced(own, "edgeci").duration[conv] == own.duration[conv]
            assert desk._priced(other, "edgeci-halo").duration[conv] == own.duration[conv]
        finally:
            await stop_all([d])

    asyncio.run(main())


def test_only_a_nodes_own_requests_pieces_are_counted() -> None:
    async def main() -> None:
        (d,) = await start_daemons(1)
        try:
            d.node.own_pieces["r"] = acc = [0.0, 0.0]
            d.node.own_piece("r", 0.10, 0.01)
            d.node.own_piece("r", 0.05, 0.0)
            d.node.own_piece("not running here", 1.0, 1.0)
            assert acc == pytest.approx([0.15, 0.01])
            assert "not running here" not in d.node.own_pieces
        finally:
            await stop_all([d])

    asyncio.run(main())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["edgeci", "edgeci-halo"])
def test_a_distributed_request_charges_what_ran_beside_its_own_pieces(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The share is taken over the auctioneer's own pieces (the other threads' CPU while
    they computed), not over the whole of the maps' time."""
    monkeypatch.setattr(decider, "LOCAL_MARGIN", -1.0)  # any plan that spans peers

    async def main() -> None:
        async with cluster(2) as (a, _):
            seen: list[tuple[str, float, float]] = []
            monkeypatch.setattr(a.node, "ran", lambda s, c, w: seen.append((s, c, w)))
            x = to_input(decode(IMAGE), "224").numpy()
            res = await a.infer(InferRequest("r1", "resnet34", tensor=x, strategy=strategy))
            assert res.plan is not None
            assert not a.node.own_pieces  # nothing left behind
            pieces = [
                p
                for st in Plan.from_dict(res.plan).stages
                for p in st.parts
                if p.device == Plan.from_dict(res.plan).auctioneer
            ]
            if not seen:  # the plan gave this node no part of the maps
                assert not pieces
                return
            ((s, others, wall),) = seen
            assert s == strategy and others >= 0.0
            assert 0.0 < wall <= res.timing["total"]
            assert pieces  # it computed pieces of its own

    asyncio.run(main())

"""Each device's compute against its share in an auctioneer's own plans, learnt from
the requests it ran and charged to every bid in its rounds (policy/balance.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest

from edgeci_p2p.aio.run import RunStats
from edgeci_p2p.auction import decider
from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.awas import probe_call
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan as plan_with
from edgeci_p2p.planners.head import with_head_on
from edgeci_p2p.policy.balance import Balance, predicted_compute
from tests.daemons import start_daemons, stop_all
from tests.planfakes import fake_testbed


def _runs(**ratios: float) -> dict[str, tuple[float, float]]:
    """Per device, (measured, predicted) seconds: 0.5 s predicted, run at ``ratio`` of it."""
    return {n: (0.5 * r, 0.5) for n, r in ratios.items()}


def test_a_device_that_runs_long_against_its_share_is_priced_up_and_the_median_keeps_one() -> None:
    b = Balance(skip=0)
    assert b.observe("s", "plan", _runs(a=1.2, b=1.0, c=1.0)) == {}  # a plan's first run: cold
    # The auctioneer "a" ran 1.2x its prediction where its helpers ran theirs: its bid
    # is priced 1.2x, the median device's stays 1, a faster one's falls.
    assert b.observe("s", "plan", _runs(a=1.2, b=1.0, c=0.9)) == {"a": 1.2, "c": 0.9}
    assert (b.factor("s", "a"), b.factor("s", "b"), b.factor("s", "c")) == (1.2, 1.0, 0.9)
    assert b.factor("other strategy", "a") == 1.0


def test_a_factor_that_balances_stays_in_force() -> None:
    b = Balance(skip=0)
    b.observe("s", "plan", {})
    assert b.observe("s", "plan", _runs(a=1.2, b=1.0, c=1.0)) == {"a": 1.2}
    # Priced at 1.2 its plan now predicts it 1.2x longer, and it runs just that: balanced.
    for _ in range(10):
        assert b.observe("s", "plan", _runs(a=1.0, b=1.0, c=1.0)) == {}
    assert b.factor("s", "a") == 1.2
    # All of them slower alike is the bids' level, their calibrations' business.
    assert b.observe("s", "plan", _runs(a=1.5, b=1.5, c=1.5)) == {}


def test_the_cold_requests_tiny_shares_and_outliers_are_kept_out() -> None:
    b = Balance(skip=2)
    b.observe("s", "plan", {})
    assert b.observe("s", "plan", _runs(a=2.0, b=1.0)) == {}  # two cold requests
    assert b.observe("s", "plan", _runs(a=2.0, b=1.0)) == {}
    # A device with a few ms of predicted compute is not judged; one alone has no peer.
    tiny = {"a": (0.02, 0.005), "b": (0.5, 0.5)}
    assert b.observe("s", "plan", tiny) == {} and b.seen["s"] == 2
    # A stalled peer: the factor stops at its bound.
    for _ in range(10):
        b.observe("s", "plan", _runs(a=10.0, b=1.0, c=1.0))
    assert b.factor("s", "a") == b.highest


def test_the_predicted_compute_is_the_simulators_without_the_auctioneers_own_head() -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([8.0, 4.0, 2.0], [100, 100, 100], shared=False)
    plan = plan_with("edgeci-halo", spec, tb)
    sim = simulate(plan, spec, tb)
    got = predicted_compute(plan, spec, tb)
    head = sum(e.stop - e.start for e in sim.events if e.label == "head")
    total = sum(e.stop - e.start for e in sim.events if e.lane == "compute" and e.label != "scale")
    assert head > 0 and sum(got) == pytest.approx(total - head)
    # Nor the fixed cost per piece: the workers' seconds leave its hops out.
    hops = replace(
        tb, devices=tuple(replace(d, compute=d.compute.with_piece(0.005)) for d in tb.devices)
    )
    assert predicted_compute(plan, spec, hops) == pytest.approx(got)
    assert simulate(plan, spec, hops).latency > sim.latency
    # A head on another peer is that peer's compute, as its head job reports it.
    away = with_head_on(plan, "d1", "test")
    events = simulate(away, spec, tb).events
    on_d1 = [e.stop - e.start for e in events if e.device == 1 and e.lane == "compute"]
    assert any(e.label == "head" and e.device == 1 for e in events)
    assert predicted_compute(away, spec, tb)[1] == pytest.approx(sum(on_d1))


def test_a_changed_pricing_plans_the_next_stale_round_anew() -> None:
    class Counting:
        plan, testbed, left_out = None, None, {}

        def __call__(self, call: object, bids: object) -> dict[str, tuple[object, ...]]:
            return {}

    cached = decider.CachedDecider(Counting())  # type: ignore[arg-type]
    call = am.CallForBids("auc", "me", "fp", (am.WorkItem("i0", {"conv": 1}),), window=0.1)

    def bids(seconds: float) -> list[am.Bid]:
        return [am.Bid("auc", "p", duration={"i0": seconds}, valid_for=1.0)]

    cached(call, bids(0.1))
    cached(call, bids(0.105))  # 5%: priced into the plan at hand
    assert cached.pending is None
    cached.replan = True
    cached(call, bids(0.11))  # 10%, but priced otherwise on purpose: planned anew
    assert cached.pending is not None and not cached.replan


def test_a_daemon_learns_it_from_its_own_requests_and_prices_every_bid_with_it() -> None:
    async def main() -> None:
        (d,) = await start_daemons(1)
        try:
            desk = d.parts.desk
            spec = d.node.store.spec("resnet34", 224, 224)
            tb = fake_testbed([8.0, 4.0], [100, 100], shared=False)
            tb = replace(tb, devices=(replace(tb.devices[0], name=d.node.node_id), tb.devices[1]))
            plan = plan_with("edgeci-halo", spec, tb)
            assert len(set(plan.devices)) == 2
            predicted = predicted_compute(plan, spec, tb)
            stats = RunStats()
            stats.computed(plan.devices[0], 1.3 * predicted[0])  # this node: 1.3x its share
            stats.computed(plan.devices[1], predicted[1])
            run = SimpleNamespace(plan=plan, stats=stats, spec=spec, testbed=tb)
            for _ in range(4):  # the first run of the plan and two cold ones first
                desk.ran(run)  # type: ignore[arg-type]
            assert d.node.balance.factor("edgeci-halo", d.node.node_id) > 1.05
            assert d.node.balance.factor("edgeci-halo", plan.devices[1]) < 0.95
            own = d.node.bidder.bid(probe_call("r", d.node.node_id, spec), 0.0)
            conv = "probe:conv:1"
            factor = d.node.balance.factor("edgeci-halo", d.node.node_id)
            assert desk._priced(own, "edgeci-halo").duration[conv] == pytest.approx(
                factor * own.duration[conv]
            )
            assert desk._priced(own, "edgeci").duration[conv] == own.duration[conv]
            # A gather plan's run teaches nothing (no stage waits on a neighbour there).
            desk.ran(
                SimpleNamespace(
                    plan=replace(plan, strategy="edgeci"), stats=stats, spec=spec, testbed=tb
                )
            )  # type: ignore[arg-type]
            assert "edgeci" not in d.node.balance.seen
            # Work that ran twice (a retried tile) says nothing about the shares.
            stats.retries = 1
            seen = d.node.balance.seen["edgeci-halo"]
            desk.ran(run)  # type: ignore[arg-type]
            assert d.node.balance.seen["edgeci-halo"] == seen
        finally:
            await stop_all([d])

    asyncio.run(main())

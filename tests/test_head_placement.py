"""The head on another device than the auctioneer: plan field, simulator, placement."""

from __future__ import annotations

import dataclasses

import pytest

from edgeci_p2p.core.geometry import head_flops
from edgeci_p2p.core.plan import Plan, PlanError, validate
from edgeci_p2p.core.sim import head_bytes, head_seconds, remote_head_seconds, simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import BASELINES, plan
from edgeci_p2p.planners.head import HEAD_MIN_GAIN, place_head
from edgeci_p2p.planners.testbeds import load_testbed
from tests.planfakes import check_plan, fake_testbed

VGG = spec_for("vgg16")


def test_the_head_device_round_trips_shows_and_is_validated() -> None:
    tb = load_testbed("mixed-8")
    p = dataclasses.replace(plan("local", VGG, tb), head_device=0)
    assert Plan.from_dict(p.to_dict()) == p
    assert "head_device" not in dataclasses.replace(p, head_device=None).to_dict()
    assert f"head @ {tb.names[0]} (the last map sent there)" in str(p)
    assert p.head_at == 0 and dataclasses.replace(p, head_device=None).head_at == tb.auctioneer
    validate(p, VGG)
    with pytest.raises(PlanError, match="head device"):
        validate(dataclasses.replace(p, head_device=len(tb.devices)), VGG)


def test_the_simulator_sends_the_last_map_out_and_the_logits_back() -> None:
    # Two devices: the auctioneer 20x slower than device 1 at everything.
    tb = fake_testbed([1.0, 20.0], [100.0, 100.0], shared=False, rtt_ms=4.0)
    home = plan("local", VGG, tb)
    there = dataclasses.replace(home, head_device=1)
    a = simulate(home, VGG, tb)
    b = simulate(there, VGG, tb)
    stages_end = a.latency - head_seconds(VGG, tb)
    out_b, back_b = head_bytes(VGG)
    assert out_b == 512 * 7 * 7 * 4 and back_b == 1000 * 4
    link = tb.link(1)
    run = tb.devices[1].compute.seconds("head", head_flops(VGG))
    want = stages_end + link.seconds(out_b) + run + link.seconds(back_b)
    assert b.latency == pytest.approx(want, rel=1e-12)
    assert b.latency == pytest.approx(stages_end + remote_head_seconds(VGG, tb, 1), rel=1e-12)
    assert b.bytes_moved == a.bytes_moved + out_b + back_b
    heads = [e for e in b.events if e.label == "head"]
    assert [(e.device, e.lane) for e in heads] == [(1, "compute")]
    (sent,) = [e for e in b.events if e.label == "head map" and e.lane == "send"]
    assert sent.device == 0 and sent.stop - sent.start == pytest.approx(link.seconds(out_b))


def test_our_strategies_move_the_head_off_a_slow_entry_device() -> None:
    # mixed-8: a camera-class Pi receives the request; the laptop runs VGG-16's
    # classifier ten times faster and the 100 KB map is cheap to send it.
    tb = load_testbed("mixed-8")
    for strategy in ("edgeci", "edgeci-halo"):
        p = plan(strategy, VGG, tb)
        check_plan(p, VGG, tb)
        assert p.head_device is not None and p.head_device != tb.auctioneer, strategy
        assert tb.names[p.head_device] == "laptop"
        res = simulate(p, VGG, tb, record=False)
        assert res.latency == pytest.approx(p.predicted, rel=1e-9)
        home = simulate(dataclasses.replace(p, head_device=None), VGG, tb, record=False)
        assert home.latency - res.latency > 0.15  # 200 ms of head -> 19 ms there
    for strategy in BASELINES:  # as their papers: the head where the request is
        assert plan(strategy, VGG, tb).head_device is None, strategy


@pytest.mark.parametrize("testbed", ["emulated-4", "homog-4", "pi3-aofl-4", "pi4-wifi-4"])
def test_the_head_stays_home_when_the_auctioneer_is_as_fast_as_any(testbed: str) -> None:
    tb = load_testbed(testbed)
    for model in ("vgg16", "resnet34"):
        assert plan("edgeci-halo", spec_for(model), tb).head_device is None, (testbed, model)


def test_a_small_gain_does_not_move_the_head() -> None:
    # Device 1 runs the head a bit faster, not by HEAD_MIN_GAIN once the trip is paid.
    tb = fake_testbed([10.0, 11.0], [1000.0, 1000.0], shared=False, rtt_ms=1.0)
    here = head_seconds(VGG, tb)
    there = remote_head_seconds(VGG, tb, 1)
    assert there < here and here - there < HEAD_MIN_GAIN * here
    p = plan("local", VGG, tb)
    assert place_head(p, VGG, tb).head_device is None
    # ... and a large one does, with the prediction moved by exactly the time saved.
    fast = fake_testbed([1.0, 20.0], [1000.0, 1000.0], shared=False, rtt_ms=1.0)
    p = dataclasses.replace(plan("local", VGG, fast), predicted=1.0)
    q = place_head(p, VGG, fast)
    gain = head_seconds(VGG, fast) - remote_head_seconds(VGG, fast, 1)
    assert q.head_device == 1 and q.predicted == pytest.approx(1.0 - gain)
    assert q.notes["head"]["device"] == 1


def test_the_auction_places_the_head_too_and_predicts_with_it() -> None:
    # The daemon's path: AWAS over bids (mixed-8's devices bidding), not the registry.
    from edgeci_p2p.auction.awas import AwasPlanner, predict_with_backlog, probe_call
    from edgeci_p2p.auction.bidder import Bidder
    from edgeci_p2p.core.workload import Workload

    tb = load_testbed("mixed-8")
    peers = [
        Bidder(d.name, d.compute, tb.link(i), d.memory_bytes, horizon=1e6)
        for i, d in enumerate(tb.devices)
    ]
    call = probe_call("r", tb.names[tb.auctioneer], VGG)
    bids = [b.bid(call, 0.0) for b in peers]
    for strategy in ("edgeci", "edgeci-halo"):
        planner = AwasPlanner(VGG, shared_medium=tb.shared_medium, strategy=strategy)
        planner(call, bids)
        p, btb = planner.plan, planner.testbed
        assert p is not None and btb is not None
        validate(p, VGG)
        assert p.head_device is not None and p.devices[p.head_device] == "laptop", strategy
        work = Workload(VGG)
        there = predict_with_backlog(p, VGG, btb, {}, work)
        home = predict_with_backlog(dataclasses.replace(p, head_device=None), VGG, btb, {}, work)
        want = head_seconds(VGG, btb) - remote_head_seconds(VGG, btb, p.head_device)
        assert home - there == pytest.approx(want, rel=1e-9)
        # A head device still busy with queued work runs the head only after it.
        late = predict_with_backlog(p, VGG, btb, {"laptop": there + 1.0}, work)
        assert late > there + 1.0

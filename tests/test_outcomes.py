"""Running alone or distributing, judged by what each really took here
(policy/outcomes.py, and the auctioneer that uses it)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeci_p2p.aio.auctioneer import Auctioneer
from edgeci_p2p.auction import decider
from edgeci_p2p.auction.awas import AwasPlanner, probe_call
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.policy.outcomes import MEASURED_MARGIN, RETRY_S, Outcomes, choose
from tests.planfakes import fake_testbed


def test_cold_requests_are_left_out() -> None:
    o = Outcomes(skip=2)
    o.record("k", 0.300, 0.900, now=0.0)
    o.record("k", 0.300, 0.900, now=0.0)
    assert o.ran_before("k") and "k" not in o.samples
    for _ in range(3):
        o.record("k", 0.300, 0.330, now=1.0)
    assert o.measured("k", 0.300, now=2.0) == pytest.approx(0.330)


def test_a_new_plans_first_run_counts_as_run_but_is_no_sample() -> None:
    # The first request of a plan made in the background took 1.5 s, its next ones 0.6:
    # kept, it sent the strategy alone for the rest of a benchmark run.
    o = Outcomes(skip=0)
    o.ran("halo", "vgg16", False, 0.500, 1.500, now=0.0, shape="plan A")  # its first run
    for _ in range(3):
        o.ran("halo", "vgg16", False, 0.500, 0.600, now=0.0, shape="plan A")
    assert o.measured(("halo", "vgg16"), 0.500, now=1.0) == pytest.approx(0.600)
    o.ran("halo", "vgg16", False, 0.480, 1.500, now=1.0, shape="plan B")  # cold: not kept
    assert len(o.samples[("halo", "vgg16")]) == 3 and o.seen[("halo", "vgg16")] == 5
    o.ran("halo", "vgg16", False, 0.480, 0.580, now=2.0, shape="plan B")  # warm: kept
    assert len(o.samples[("halo", "vgg16")]) == 4
    assert o.measured(("halo", "vgg16"), 0.480, now=3.0) == pytest.approx(0.600)
    # A key's first run is a new shape too; without shapes every run is a sample.
    o.ran("edgeci", "vgg16", False, 0.5, 0.9, now=3.0, shape="plan C")
    o.ran("edgeci", "vgg16", False, 0.5, 0.9, now=3.0)
    o.ran("edgeci", "vgg16", False, 0.5, 0.9, now=3.0)
    assert len(o.samples[("edgeci", "vgg16")]) == 2


def test_the_median_is_taken_so_one_stalled_request_does_not_move_it() -> None:
    o = Outcomes(skip=0)
    for measured in (0.310, 0.900, 0.320):
        o.record("k", 0.300, measured, now=0.0)
    assert o.measured("k", 0.300, now=1.0) == pytest.approx(0.320)


def test_figures_need_fresh_samples_made_near_the_prediction() -> None:
    o = Outcomes(skip=0)
    o.record("k", 0.300, 0.420, now=0.0)
    o.record("k", 0.310, 0.410, now=0.5)
    assert o.measured("k", 0.300, now=1.0) is None  # two runs: one of them may be noise
    o.record("k", 0.300, 0.405, now=1.0)
    assert o.measured("k", 0.300, now=2.0) == pytest.approx(0.410)  # median of 420, 410, 405
    # Near a prediction that moved less than ``similar``: the times as they were.
    assert o.measured("k", 0.330, now=2.0) == pytest.approx(0.410)
    # A prediction far from the one they were made at: they say nothing about it.
    assert o.measured("k", 0.455, now=2.0) is None
    # Old samples no longer count.
    assert o.measured("k", 0.300, now=0.5 + o.max_age_s + 0.1) is None
    assert o.ran_before("k") and not o.ran_before("other")
    assert o.age("k", now=3.0) == pytest.approx(2.0) and o.age("other", 3.0) is None


def test_figures_are_bounded_only_the_newest_samples_are_kept_and_nonsense_is_ignored() -> None:
    o = Outcomes(skip=0, keep=3)
    for i in range(5):
        o.record("k", 0.1, 10.0, now=float(i))  # a stalled run, 100x its plan
    assert len(o.samples["k"]) == 3 and o.samples["k"][0].at == 2.0
    assert o.measured("k", 0.1, now=5.0) == pytest.approx(o.highest * 0.1)
    o.record("z", 0.0, 0.5, now=0.0)
    o.record("z", float("nan"), 0.5, now=0.0)
    o.record("z", 0.5, -1.0, now=0.0)
    assert not o.ran_before("z")


def test_choose_compares_measured_figures_with_the_smaller_margin() -> None:
    # The emulated cluster's case: 9.5% predicted gain, 14% measured.
    c = choose(0.411, 0.454, 0.440, 0.508, True, margin=0.1)
    assert c.distribute and not c.explore and c.why.startswith("as measured")
    # As measured, alone is faster: alone, whatever the raw predictions say.
    c = choose(0.300, 0.454, 0.480, 0.454, True, margin=0.1)
    assert not c.distribute and "distributed 480 ms (plan 300)" in c.why
    # Measured figures within MEASURED_MARGIN of each other: alone.
    assert not choose(0.3, 0.454, 0.454 * (1 - MEASURED_MARGIN / 2), 0.454, True, 0.1).distribute


def test_a_prediction_that_rose_with_the_calibrations_is_not_charged_twice() -> None:
    # A benchmark run: edgeci's plan rose from 550 to 599 ms as the peers' calibrations
    # caught up, its requests took 734-771 ms either way, alone took ~865.
    o = Outcomes(skip=0)
    for t, (pred, took) in enumerate([(0.550, 0.771), (0.550, 0.747), (0.599, 0.734)]):
        o.record(("edgeci", "vgg16"), pred, took, now=float(t))
    o.record(("edgeci", "vgg16"), 0.599, 1.311, now=3.0)  # the whole machine slowed
    for t, took in enumerate([0.872, 0.862, 0.810, 0.869, 1.171, 0.819]):
        o.record(("alone", "vgg16"), 0.802, took, now=float(t))
    c = o.judge("edgeci", "vgg16", 0.599, 0.802, now=4.0, margin=0.1)
    # As ratios (x1.39 on 599 against x1.05 on 802) it ran alone.
    assert c.distribute and c.measured, c.why


def test_without_both_figures_the_predictions_decide_as_before() -> None:
    assert choose(0.300, 0.454, None, None, False, margin=0.1).distribute
    c = choose(0.420, 0.454, None, 0.508, False, margin=0.1)
    # Never distributed here (ResNet-34 on the emulated cluster): never tried.
    assert not c.distribute and c.why == "distributing predicted < 10% gain (420 against 454 ms)"
    assert not choose(0.420, 0.454, 0.420, None, True, margin=0.1).distribute


def test_a_plan_that_ran_before_is_tried_again_while_it_beats_the_measured_alone() -> None:
    c = choose(0.455, 0.454, None, 0.508, True, margin=0.1)
    assert c.distribute and c.explore and "tried again" in c.why
    # Not while it predicts more than alone measured.
    assert not choose(0.520, 0.454, None, 0.508, True, margin=0.1).distribute


def test_a_way_that_lost_as_measured_is_tried_again_once_its_figures_are_old() -> None:
    # Two slow requests made distributing lose; running alone adds nothing to its figures.
    lost = choose(0.525, 0.836, 0.860, 0.812, True, 0.1, distributed_age=RETRY_S / 2)
    assert not lost.distribute and lost.measured
    again = choose(0.525, 0.836, 0.860, 0.812, True, 0.1, distributed_age=RETRY_S)
    assert again.distribute and again.explore and "last ran 30 s ago" in again.why
    # Not a plan that predicts more than alone measured.
    assert not choose(0.9, 0.836, 0.860, 0.812, True, 0.1, distributed_age=RETRY_S).distribute


def _auctioneer() -> tuple[Auctioneer, Bidder, list[float]]:
    tb = fake_testbed([4.0, 2.0, 1.0], [50, 50, 50])
    own = tb.devices[0]
    bidder = Bidder(own.name, own.compute, tb.link(0), own.memory_bytes, horizon=1e6)

    async def no_send(to: str, msg: object) -> bool:
        return True

    clock = [1000.0]
    auct = Auctioneer(own.name, bidder, no_send, clock=lambda: clock[0])
    return auct, bidder, clock


def test_the_auctioneer_leaves_running_alone_once_alone_measured_slower() -> None:
    spec = spec_for("vgg11", 64, 64)
    auct, bidder, clock = _auctioneer()
    auct.outcomes.skip = 0
    tb = fake_testbed([4.0, 2.0, 1.0], [50, 50, 50])
    call = probe_call("r", tb.names[0], spec)
    bids = [
        Bidder(d.name, d.compute, tb.link(i), d.memory_bytes, horizon=1e6).bid(call, 0.0)
        for i, d in enumerate(tb.devices)
    ]
    planner = AwasPlanner(spec, own=bidder.compute, strategy="edgeci-halo")
    planner(call, bids)
    assert planner.plan is not None and len(set(planner.plan.devices)) > 1
    local = auct.local_decision(spec, None).plan
    assert local.predicted is not None
    lp = local.predicted
    # The distributed plan's prediction has risen to 5% under alone's: not enough.
    dist = replace(planner.plan, predicted=0.95 * lp)
    assert not auct._choose(dist, spec).distribute
    # It ran before, at a lower prediction: that says nothing about this one. (A plan's
    # first run, alone or distributed, is cold: no sample.)
    for _ in range(4):
        auct.ran(replace(dist, predicted=0.65 * lp), spec, 0.9 * lp)
        clock[0] += 1.0
    assert not auct._choose(dist, spec).distribute
    # Alone runs 12% over its plan: the distributed plan is tried again ...
    for _ in range(4):
        auct.ran(local, spec, 1.12 * lp)
        clock[0] += 1.0
    # ... until three runs near its plan say it is worth it, as measured.
    for _ in range(3):
        tried = auct._choose(dist, spec)
        assert tried.distribute and tried.explore
        auct.ran(dist, spec, 0.97 * lp)
        clock[0] += 1.0
    measured = auct._choose(dist, spec)
    assert measured.distribute and not measured.explore
    # Once every figure is old, the predictions decide again.
    clock[0] += auct.outcomes.max_age_s + 1.0
    assert not auct._choose(dist, spec).distribute


def test_the_fallback_margin_is_still_the_deciders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decider, "LOCAL_MARGIN", -1.0)
    spec = spec_for("vgg11", 64, 64)
    auct, _, _ = _auctioneer()
    local = auct.local_decision(spec, None).plan
    assert local.predicted is not None
    slower = replace(local, predicted=1.5 * local.predicted, devices=("a", "b"))
    assert auct._choose(slower, spec).distribute

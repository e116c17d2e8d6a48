"""A peer's event loop's pick-up delay (``hop_s``): learnt from its strip pieces,
carried in its bids, and charged at both ends of every halo row move by the simulator
and the halo planner."""

from __future__ import annotations

import dataclasses

import pytest

from edgeci_p2p.auction.awas import probe_call
from edgeci_p2p.auction.awas import testbed_from_bids as derive_testbed
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.messages import Bid
from edgeci_p2p.auction.on_wire import from_wire, to_wire
from edgeci_p2p.core.cost import Testbed as Cluster
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners.dpfl import plan_edgeci
from edgeci_p2p.planners.halo import plan_edgeci_halo
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.policy.hops import LoopHops
from edgeci_p2p.wire.messages import MessageError as WireMessageError
from edgeci_p2p.wire.messages import message_from_wire
from tests.planfakes import fake_testbed

VGG = spec_for("vgg16")


def with_hops(tb: Cluster, hop_s: float) -> Cluster:
    devices = tuple(dataclasses.replace(d, hop_s=hop_s) for d in tb.devices)
    return dataclasses.replace(tb, devices=devices)


def test_the_figure_is_the_recent_median_and_moves_only_past_its_band() -> None:
    hops = LoopHops(keep=8, min_samples=4)
    assert hops.observe([0.004, 0.004, 0.004]) is None  # too few yet
    assert hops.observe([0.0061]) == pytest.approx(0.004)  # median 0.004, on the grid
    # A median within the band (1 ms, or 30%) leaves it.
    assert hops.observe([0.0048, 0.0048, 0.0048]) is None
    assert hops.hop_s == pytest.approx(0.004)
    # The old delays age out of the window; a median past the band moves it.
    assert hops.observe([0.012] * 8) == pytest.approx(0.012)
    # A stall counts as the most a hop is taken to be, not more.
    assert hops.observe([10.0] * 8) == pytest.approx(hops.highest)


def test_a_halo_move_waits_for_both_loops_and_a_gather_plan_does_not() -> None:
    tb = load_testbed("emulated-4")
    halo = plan_edgeci_halo(VGG, tb)
    moves = sum(st.transfer == "halo" for st in halo.stages)
    assert moves > 0
    slow = with_hops(tb, 0.01)
    # The same plan, each move 20 ms later: later by at least one move's wait.
    assert simulate(halo, VGG, slow).latency >= simulate(halo, VGG, tb).latency + 0.02 - 1e-9
    gather = plan_edgeci(VGG, tb)
    assert all(st.transfer == "gather" for st in gather.stages)
    assert simulate(gather, VGG, slow).latency == pytest.approx(simulate(gather, VGG, tb).latency)


def test_slower_loops_plan_fewer_halo_boundaries() -> None:
    tb = load_testbed("emulated-4")
    counts = [
        sum(st.transfer == "halo" for st in plan_edgeci_halo(VGG, with_hops(tb, h)).stages)
        for h in (0.0, 0.005, 0.02)
    ]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0], counts


def test_bids_carry_it_into_the_planners_devices_and_the_wire_checks_it() -> None:
    bid = Bid("a", "b", duration={"x": 1.0}, hop_s=0.0035)
    assert Bid.from_dict(bid.to_dict()) == bid
    assert from_wire(to_wire(bid)) == bid  # type: ignore[arg-type]
    assert Bid.from_dict({"auction": "a", "bidder": "b"}).hop_s == 0.0
    wire = to_wire(bid).to_wire()
    with pytest.raises(WireMessageError, match="hop_s"):
        message_from_wire({**wire, "hop_s": -0.001})
    # From a bidder's bid to the device the planners see, and through a plan's JSON.
    tb = fake_testbed([2.0, 5.0], [50, 100])
    call = probe_call("r", tb.names[0], VGG)
    bids = []
    for i, d in enumerate(tb.devices):
        bidder = Bidder(d.name, d.compute, tb.link(i), d.memory_bytes, horizon=1e6)
        bidder.hop_s = 0.002 * (i + 1)
        bids.append(bidder.bid(call, 0.0))
    derived, left = derive_testbed(call, bids, span=1.0)
    assert left == {}
    assert [d.hop_s for d in derived.devices] == [0.002, 0.004]
    assert [d.hop_s for d in Cluster.from_dict(derived.to_dict()).devices] == [0.002, 0.004]

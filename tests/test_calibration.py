"""A peer calibrates the compute model behind its bids from the work it serves."""

from __future__ import annotations

import numpy as np
import pytest

from edgeci_p2p.auction.awas import probe_call
from edgeci_p2p.auction.messages import Bid, MessageError
from edgeci_p2p.auction.on_wire import from_wire, to_wire
from edgeci_p2p.wire.messages import InferRequest, message_from_wire
from edgeci_p2p.wire.messages import MessageError as WireMessageError
from tests.daemons import IMAGE, cluster


@pytest.mark.asyncio
async def test_a_peer_that_computes_faster_than_it_bid_bids_faster_after_serving() -> None:
    async with cluster(1, calibrate_speed=True) as (d,):
        profiled = d.compute
        # Claim a CPU a hundred times slower than this one: every piece then runs in
        # at most a tenth of its predicted time, far past any noise, and the slowdown
        # settles on its lower bound.
        d.compute = profiled.scaled(0.01)
        claimed = d.compute
        for i in range(8):
            req = InferRequest(f"cal-{i}", "resnet34", image=IMAGE, strategy="local")
            res = await d.infer(req)
            assert np.array(res.logits).size == 1000
        node = d.started
        cal = node.calibration
        assert cal.windows >= cal.min_windows
        # At its floor: the grid point nearest the lower bound.
        assert cal.lowest <= cal.slowdown < cal.lowest * cal.grid
        for kind, fit in claimed.fits.items():
            assert d.compute.fits[kind].a == pytest.approx(fit.a * cal.slowdown)
            assert d.bidder.compute.fits[kind].a == pytest.approx(fit.a * cal.slowdown)


@pytest.mark.asyncio
async def test_calibration_off_keeps_the_profile() -> None:
    async with cluster(1, calibrate_speed=False) as (d,):
        d.compute = claimed = d.compute.scaled(0.01)
        for i in range(3):
            await d.infer(InferRequest(f"off-{i}", "resnet34", image=IMAGE, strategy="local"))
        assert d.compute is claimed and d.started.calibration.windows == 0


@pytest.mark.asyncio
async def test_strip_pieces_calibrate_apart_and_bids_carry_their_factor() -> None:
    """Tiles at their profile, strips at 1.5x it: the bid keeps the tiles' speed and
    says the strips' with ``strip_factor``, which a strip-resident round charges."""
    async with cluster(1, calibrate_speed=True) as (d,):
        node = d.started
        work = [("conv", 2e9)]
        seconds = node.profiled.seconds("conv", 2e9)  # type: ignore[union-attr]
        for _ in range(int(6 * node.calibration.window_s / seconds) + 1):  # 6 windows each
            node.served(work, seconds)
            node.served(work, 1.5 * seconds, strip=True)
        assert node.calibration.slowdown == 1.0
        assert node.strips.slowdown == pytest.approx(node.strips.grid**4)  # 1.46
        assert d.bidder.strip_factor == pytest.approx(node.strips.slowdown)
        call = probe_call("r", "someone", d.store.spec("resnet34", 224, 224))  # type: ignore[union-attr]
        bid = d.bidder.bid(call, 0.0)
        assert from_wire(to_wire(bid)).strip_factor == bid.strip_factor  # type: ignore[union-attr]
        conv = "probe:conv:1"
        desk = d.parts.desk
        assert desk._priced(bid, "edgeci").duration[conv] == bid.duration[conv]
        halo = desk._priced(bid, "edgeci-halo")
        assert halo.duration[conv] == pytest.approx(bid.strip_factor * bid.duration[conv])


@pytest.mark.asyncio
async def test_pieces_beside_the_planning_child_leave_the_calibration_alone() -> None:
    """The daemon's own planning child (its CPU is not the daemon's threads', so
    ``own_seconds`` cannot take it out) slowed the pieces it ran beside: not learnt."""
    async with cluster(1, calibrate_speed=True) as (d,):
        node = d.started
        aside = d.parts.desk.auctioneer.refresh.aside
        assert aside is not None and node.disturbed == aside.disturbing
        work = [("conv", 2e9)]
        seconds = node.profiled.seconds("conv", 2e9)  # type: ignore[union-attr]
        many = int(6 * node.calibration.window_s / seconds) + 1  # 6 windows
        aside.running = True
        for _ in range(many):
            node.served(work, 3 * seconds)
        assert node.calibration.windows == 0 and node.calibration.slowdown == 1.0
        aside.running = False
        aside.ran_until = float("-inf")
        for _ in range(many):
            node.served(work, 3 * seconds)
        assert node.calibration.slowdown > 1.0


def test_a_bid_refuses_a_strip_factor_out_of_range() -> None:
    for bad in (0.1, 5.0, "x", True):
        with pytest.raises(MessageError, match="strip_factor"):
            Bid.from_dict({"auction": "a", "bidder": "b", "strip_factor": bad})
    assert Bid.from_dict({"auction": "a", "bidder": "b"}).strip_factor == 1.0


def test_the_wire_refuses_a_strip_factor_out_of_range() -> None:
    bid = Bid("a", "b", strip_factor=1.5)
    wire = to_wire(bid).to_wire()
    assert from_wire(message_from_wire(wire)) == bid
    with pytest.raises(WireMessageError, match="strip_factor"):
        message_from_wire({**wire, "strip_factor": 9.0})

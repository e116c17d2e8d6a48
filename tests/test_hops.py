"""A peer's event loop's pick-up delay (``hop_s``): learnt from its strip pieces,
carried in its bids, and charged at both ends of every halo row move and before every
output a peer sends back to the auctioneer, by the simulator and the planners."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from edgeci_p2p.aio.connection import connect
from edgeci_p2p.auction.awas import probe_call
from edgeci_p2p.auction.awas import testbed_from_bids as derive_testbed
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.messages import Bid
from edgeci_p2p.auction.on_wire import from_wire, to_wire
from edgeci_p2p.core.cost import Testbed as Cluster
from edgeci_p2p.core.geometry import Region, Span, trace
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.dpfl import plan_edgeci
from edgeci_p2p.planners.halo import _strip_terms, plan_edgeci_halo
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.policy.hops import LoopHops
from edgeci_p2p.wire.messages import Error, Rect, TileRequest, TileResult, message_from_wire
from edgeci_p2p.wire.messages import MessageError as WireMessageError
from edgeci_p2p.wire.session import SessionConfig
from tests.daemons import WAIT_S, start_daemons, stop_all
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


def test_a_halo_move_waits_for_both_loops() -> None:
    tb = load_testbed("emulated-4")
    halo = plan_edgeci_halo(VGG, tb)
    moves = sum(st.transfer == "halo" for st in halo.stages)
    assert moves > 0
    slow = with_hops(tb, 0.01)
    # The same plan, each move 20 ms later: later by at least one move's wait.
    assert simulate(halo, VGG, slow).latency >= simulate(halo, VGG, tb).latency + 0.02 - 1e-9


def test_a_gathered_output_waits_for_its_peers_loop_not_the_auctioneers() -> None:
    tb = load_testbed("emulated-4")
    gather = plan_edgeci(VGG, tb)
    assert all(st.transfer == "gather" for st in gather.stages)
    base = simulate(gather, VGG, tb)
    # Only the auctioneer's loop slow: its own parts are not sent; nothing changes.
    aid_only = dataclasses.replace(
        tb,
        devices=tuple(
            dataclasses.replace(d, hop_s=0.01 if i == tb.auctioneer else 0.0)
            for i, d in enumerate(tb.devices)
        ),
    )
    assert simulate(gather, VGG, aid_only).latency == pytest.approx(base.latency)
    # Every peer's loop 10 ms slow: a stage ends at most 10 ms later than its
    # predecessor did (a remote head also waits once), and the plan ends later.
    slow = simulate(gather, VGG, with_hops(tb, 0.01))
    assert slow.latency > base.latency
    waits = len(gather.stages) + (gather.head_at != tb.auctioneer)
    assert slow.latency <= base.latency + 0.01 * waits + 1e-9
    for a, b in zip(base.stage_ends, slow.stage_ends, strict=True):
        assert a - 1e-9 <= b
    # The planner's per-row model carries it on a gathered strip, not a resident one.
    ctx = Context(VGG, with_hops(tb, 0.01))
    peer = next(d for d in range(len(tb.devices)) if d != tb.auctioneer)
    af = ctx.affine(peer, 0, 4)
    assert af.back == pytest.approx(0.01) and ctx.affine(tb.auctioneer, 0, 4).back == 0.0
    assert _strip_terms(af, False, True).back == 0.0
    assert _strip_terms(af, True, False).back == pytest.approx(0.01)


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


def test_a_tile_served_for_a_peer_tells_its_loops_pick_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before a tile's result can go back its loop must take it from the worker: that
    delay joins the strip pieces' in the figure the bids carry."""
    delays: list[list[float]] = []

    async def main() -> TileResult | Error:
        (d,) = await start_daemons(1, calibrate_speed=True, plaintext=True)
        try:
            monkeypatch.setattr(d.node, "picked_up", delays.append)
            spec = d.node.store.spec("resnet34", 224, 224)
            out = Region(Span(0, 4), Span(0, 56))
            need = trace(spec, 0, 1, out).need
            x = np.zeros((1, 3, need.rows.size, need.cols.size), np.float32)
            req = TileRequest(
                "r1",
                1,
                "resnet34",
                d.node.store.get("resnet34").fingerprint,
                0,
                1,
                Rect((0, 4), (0, 56)),
                Rect((need.rows.start, need.rows.stop), (need.cols.start, need.cols.stop)),
                x,
                input_hw=(224, 224),
            )
            conn = await connect("127.0.0.1", d.port, SessionConfig("peer", role="client"))
            try:
                await conn.send(req)
                reply = await asyncio.wait_for(conn.recv(), WAIT_S)
            finally:
                await conn.close()
            assert isinstance(reply, TileResult | Error)
            return reply
        finally:
            await stop_all([d])

    reply = asyncio.run(main())
    assert isinstance(reply, TileResult), reply
    assert len(delays) == 1 and len(delays[0]) == 1 and delays[0][0] >= 0.0

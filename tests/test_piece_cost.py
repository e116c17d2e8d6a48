"""A fixed cost per piece of work: learnt by a peer from the pieces it serves
(policy/calibration.py), bid, and priced once per piece wherever a plan is costed."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np
import pytest

from edgeci_p2p.aio import worker as worker_module
from edgeci_p2p.aio.strips import StripOutcome
from edgeci_p2p.aio.timed import timed
from edgeci_p2p.auction.awas import compute_from_bid, probe_call
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.decider import CachedDecider
from edgeci_p2p.auction.messages import Bid
from edgeci_p2p.core import cost
from edgeci_p2p.core.cost import ComputeModel, LinearFit
from edgeci_p2p.core.geometry import full_region, trace
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.hostinfo import one_cpu
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.policy.calibration import PieceOverhead, SpeedCalibration, own_seconds, strip_factor
from edgeci_p2p.wire.messages import StripJob, StripStage
from tests.daemons import start_daemons, stop_all
from tests.planfakes import fake_testbed


def with_piece(tb: cost.Testbed, piece_s: float) -> cost.Testbed:
    return replace(
        tb, devices=tuple(replace(d, compute=d.compute.with_piece(piece_s)) for d in tb.devices)
    )


# ---- learning it --------------------------------------------------------------------------


def test_a_fixed_cost_is_told_apart_from_a_slow_speed() -> None:
    po = PieceOverhead()
    skipped = po.skip_pieces
    for _ in range(skipped):  # cold pieces: left out
        assert po.observe(0.001, 0.1) is None
    assert po.pieces == 0
    got = []
    for i in range(60):  # pieces of 1-20 ms predicted, each 1.2x slower plus 4 ms
        p = 0.001 * (1 + i % 20)
        r = po.observe(p, 1.2 * p + 0.004)
        if r is not None:
            got.append((po.pieces, r))
    # Not before min_pieces; then once, onto the grid, and it holds.
    assert got == [(po.min_pieces, pytest.approx(0.004))]
    assert po.estimate == pytest.approx(0.004)


def test_pieces_all_of_one_size_leave_the_fixed_cost_alone() -> None:
    # A peer that only runs whole models cannot tell a fixed cost from a slow speed.
    po = PieceOverhead()
    for _ in range(100):
        assert po.observe(0.2, 0.25) is None
    assert po.estimate is None and po.piece_s == 0.0


def test_the_fixed_cost_moves_only_past_its_band_and_stays_bounded() -> None:
    po = PieceOverhead(skip_pieces=0, highest=0.05)
    sizes = [0.002, 0.01, 0.03]
    for i in range(20):
        po.observe(sizes[i % 3], sizes[i % 3] + 0.010)
    assert po.piece_s == pytest.approx(0.010)
    for i in range(200):  # 11.5 ms: inside max(2 ms, 30%) of 10 ms, the bids stay
        assert po.observe(sizes[i % 3], sizes[i % 3] + 0.0115) is None
    moved = [po.observe(sizes[i % 3], sizes[i % 3] + 0.016) for i in range(300)]
    assert any(m is not None for m in moved)  # past the band: moved, within it of 16 ms
    assert abs(po.piece_s - 0.016) <= max(po.band_s, po.band * po.piece_s)
    assert po.piece_s == pytest.approx(round(po.piece_s / po.grid_s) * po.grid_s)
    for i in range(200):  # a stalled machine is not a fixed cost per piece
        po.observe(sizes[i % 3], sizes[i % 3] + 1.0)
    assert po.piece_s == po.highest
    capped = PieceOverhead(skip_pieces=0)  # by default at most a few ms (see highest)
    for i in range(40):
        capped.observe(sizes[i % 3], sizes[i % 3] + 0.010)
    assert capped.piece_s == capped.highest == 0.005
    # Pieces too short to time, and nonsense, are not counted.
    n = po.pieces
    assert po.observe(0.0001, 0.5) is None and po.observe(0.01, 0.0) is None
    assert po.pieces == n
    with pytest.raises(ValueError):
        PieceOverhead(decay=1.0)


# ---- the cost model carries it ------------------------------------------------------------


def test_a_piece_costs_its_units_and_the_fixed_cost_once() -> None:
    m = ComputeModel({"conv": LinearFit(1e-9, 1e-4), "head": LinearFit(2e-9, 0.0)})
    p = m.with_piece(0.005)
    assert p.piece([("conv", 1e6), ("conv", 2e6)]) == pytest.approx(
        m.piece([("conv", 1e6), ("conv", 2e6)]) + 0.005
    )
    assert p.piece([]) == 0.0 and p.piece([("conv", 0)]) == 0.0  # nothing to run
    assert p.scaled(0.5).piece_s == 0.005  # learnt, not profiled: the quota leaves it
    assert p.fits["dw"] == m.fits["dw"]  # still derived from conv
    assert ComputeModel.from_dict(p.to_dict()) == p
    assert "piece_s" not in m.to_dict()  # profiles and testbeds look as before
    spec = spec_for("vgg11", 64, 64)
    tr = trace(spec, 0, 3, full_region(*spec.shape_at(3)[1:]))
    assert p.trace_seconds(tr) == pytest.approx(m.trace_seconds(tr) + 0.005)


def test_the_bid_carries_it_to_the_auctioneers_model_and_plan_cache() -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([2.0, 5.0], [50, 100])
    call = probe_call("r", tb.names[0], spec)
    d = tb.devices[1]
    b = Bidder(d.name, d.compute.with_piece(0.004), tb.link(1), d.memory_bytes, horizon=1e6)
    bid = b.bid(call, 0.0)
    assert bid.piece_s == 0.004 and Bid.from_dict(bid.to_dict()) == bid
    got = compute_from_bid(bid, call)
    assert got.piece_s == 0.004
    assert got.fits["conv"].a == pytest.approx(d.compute.fits["conv"].a, rel=1e-9)
    # A new fixed cost is a new speed figure: another plan, of the same shape.
    other = replace(bid, piece_s=0.008)
    k1, k2 = CachedDecider.key(call, [bid]), CachedDecider.key(call, [other])
    assert k1 != k2 and CachedDecider.shape(k1) == CachedDecider.shape(k2)


# ---- plans price it -----------------------------------------------------------------------


def test_every_piece_of_a_plan_pays_it_and_the_planner_cuts_fewer_stages() -> None:
    spec = spec_for("vgg16", 224, 224)
    tb = load_testbed("emulated-4-headroom")
    costly = with_piece(tb, 0.010)
    free_plan = plan("edgeci-halo", spec, tb)
    # The same plan, priced with the fixed cost: slower by at least one piece per stage
    # on the critical path and the head.
    assert free_plan.predicted is not None
    again = simulate(free_plan, spec, costly).latency
    assert again >= free_plan.predicted + 0.010 * (len(free_plan.stages) + 1) - 1e-9
    # Planned with it: fewer stages, and better than the old plan under the new prices.
    costly_plan = plan("edgeci-halo", spec, costly)
    assert costly_plan.predicted is not None
    assert len(costly_plan.stages) < len(free_plan.stages)
    assert costly_plan.predicted <= again


def test_a_piece_is_not_charged_the_cpu_its_daemons_other_threads_took() -> None:
    # On a 0.4-core quota, 20 ms of the event loop's CPU during a piece is 50 ms it
    # waited; never more than half the piece; nothing where the threads have cores.
    assert own_seconds(0.2, 0.02, 0.4) == pytest.approx(0.15)
    assert own_seconds(0.2, 0.5, 0.4) == pytest.approx(0.1)
    assert own_seconds(0.2, 0.02, None) == 0.2
    assert own_seconds(0.2, 0.0, 0.4) == 0.2
    assert one_cpu(0.4) == 0.4 and one_cpu(3.0) in (None, 1.0)


def test_timed_counts_the_cpu_other_threads_ran_meanwhile() -> None:
    spins = [0]
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            spins[0] += 1

    def work() -> int:
        while spins[0] < 200_000:  # until the other thread has surely run meanwhile
            pass
        return 7

    t = threading.Thread(target=spin)
    t.start()
    try:
        out, started, stopped, others = timed(work)
    finally:
        done.set()
        t.join()
    assert out == 7 and stopped >= started and others > 0.0


def test_only_an_auctioneers_own_strip_leaves_its_loops_cpu_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A strip served for another peer keeps the CPU its event loop took meanwhile (its
    share of the halo exchange); this node's own strip of its own request does not."""
    piece = ((("conv", 10**9),), 0.2, 0.02)  # 20 ms of the loop's CPU during a 0.2 s piece

    async def ran(*_: object) -> StripOutcome:
        return StripOutcome(np.zeros((1, 64, 10, 56), np.float32), pieces=[piece])

    monkeypatch.setattr(worker_module, "run_strip_job", ran)
    charged: list[float] = []

    async def main() -> None:
        (d,) = await start_daemons(1)
        try:
            monkeypatch.setattr(
                d.node, "served", lambda _w, _s, others=0.0, strip=False: charged.append(others)
            )
            fp = d.node.store.get("resnet34").fingerprint
            stage = StripStage(0, 1, (0, 10), (0, 24), [], [])
            job = StripJob(
                "r", 1, 1, "resnet34", fp, [stage], np.zeros((1, 3, 24, 224), np.float32)
            )
            await d.parts.serving.strip_job(job)  # its own request's strip
            await d.parts.serving.strip_job(job, own=False)  # for another peer
        finally:
            await stop_all([d])

    asyncio.run(main())
    assert charged == [0.02, 0.0]


def test_the_strip_factor_waits_for_the_strips_first_estimate_and_is_bounded() -> None:
    tiles, strips = SpeedCalibration(), SpeedCalibration(band=0.15)
    assert strip_factor(strips, tiles) == 1.0  # no estimate of the strips yet
    strips.windows, strips.slowdown, tiles.slowdown = strips.min_windows, 1.46, 1.1
    assert strip_factor(strips, tiles) == pytest.approx(1.46 / 1.1)
    strips.slowdown = 4.0
    assert strip_factor(strips, tiles) == 2.0

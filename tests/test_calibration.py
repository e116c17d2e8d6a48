"""Bids follow the measured speed of the work a peer runs (auction/calibration.py)."""

from __future__ import annotations

import math

import pytest
from test_daemon import start_cluster, stop_all
from test_reliability import IMAGE

from edgeci_p2p.aio.client import Client
from edgeci_p2p.auction.calibration import Calibration, calibrated
from edgeci_p2p.core.cost import ComputeModel, LinearFit


def test_a_peer_as_fast_as_its_profile_keeps_it() -> None:
    cal = Calibration()
    for k in range(40):
        assert not cal.observe(0.1, 0.1 * (1.03 if k % 2 else 0.97))
    assert cal.factor == 1.0


def test_a_slower_peer_moves_in_whole_steps_then_holds() -> None:
    cal = Calibration(min_observations=4)
    moved = [cal.observe(0.05, 0.065) for _ in range(10)]
    assert moved[:3] == [False] * 3  # too few observations yet
    assert moved.count(True) == 1
    assert cal.factor == pytest.approx(1.3, rel=0.03)
    steps = math.log(cal.factor) / math.log1p(cal.step)
    assert steps == pytest.approx(round(steps))  # a whole number of steps: bids stay put
    # Back to profile speed: the window forgets the slow runs, and the factor comes back.
    for _ in range(cal.window):
        cal.observe(0.05, 0.05)
    assert cal.factor == 1.0


def test_noise_within_a_step_does_not_move_bids_and_tiny_work_is_ignored() -> None:
    cal = Calibration()
    for _ in range(8):
        cal.observe(0.1, 0.12)
    f = cal.factor
    assert f == pytest.approx(1.2, rel=0.03)
    for k in range(30):
        assert not cal.observe(0.1, 0.1 * f * (1.02 if k % 2 else 0.98))
    assert not cal.observe(0.0001, 5.0)  # shorter than timer noise: not observed
    assert cal.factor == f


def test_the_factor_stays_within_bounds() -> None:
    cal = Calibration(lo=0.5, hi=2.0)
    for _ in range(30):
        cal.observe(0.01, 1.0)
    assert cal.factor == pytest.approx(2.0, rel=0.05) and cal.factor <= 2.0
    for _ in range(cal.window):
        cal.observe(1.0, 0.01)
    assert cal.factor >= 0.5
    with pytest.raises(ValueError, match="bounds"):
        Calibration(lo=1.5)


def test_calibrated_slows_units_and_head_apart() -> None:
    base = ComputeModel({"conv": LinearFit(2e-11, 1e-4), "head": LinearFit(1e-10, 0.0)})
    m = calibrated(base, 1.5, 0.5)
    assert m.seconds("conv", 1e9) == pytest.approx(1.5 * base.seconds("conv", 1e9))
    assert m.seconds("pool", 1e9) == pytest.approx(1.5 * base.seconds("pool", 1e9))  # via conv
    assert m.seconds("head", 1e9) == pytest.approx(0.5 * base.seconds("head", 1e9))


@pytest.mark.asyncio
async def test_a_peer_whose_profile_is_too_fast_bids_slower_after_some_work() -> None:
    """A profile 4x too fast (as if measured in a CPU burst): after a few requests the
    peer's bids price its work nearer what it measured."""
    (d,) = await start_cluster(1, ["resnet34"])
    try:
        assert d._profiled is not None and d.bidder is not None
        fast = d._profiled.scaled(4.0)
        d._profiled = d.compute = d.bidder.compute = fast
        async with Client(f"127.0.0.1:{d.port}") as c:
            for _ in range(6):
                res = await c.infer(IMAGE, model="resnet34", strategy="local")
                assert res.top_k
        units = d._calibration["units"].factor
        assert units > 1.5  # toward 4x; the ceiling is 2x
        # ResNet-34's head (one 512x1000 layer) is below timer noise: not observed.
        assert d._calibration["head"].observations == 0
        conv = d.bidder.compute.seconds("conv", 1e9)
        assert conv == pytest.approx(units * fast.seconds("conv", 1e9))
        assert d.compute is d.bidder.compute
    finally:
        await stop_all([d])

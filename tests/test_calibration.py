"""A peer calibrates the compute model behind its bids from the work it serves."""

from __future__ import annotations

import numpy as np
import pytest

from edgeci_p2p.wire.messages import InferRequest
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

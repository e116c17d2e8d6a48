"""planners/bounds.py and benchmarks/plan_bound.py: the best plan on one set of bids,
and on the same bids with each fixed cost taken away."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgeci_p2p.core import cost
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from edgeci_p2p.planners.bounds import (
    COSTS,
    alone_seconds,
    bounds,
    free_links,
    ideal_speedup,
    no_fixed,
    no_pickup,
    none_of_these,
)
from tests.planfakes import fake_testbed, random_testbed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import plan_bound


def _with_hops(tb: cost.Testbed, hop_s: float) -> cost.Testbed:
    devices = tuple(
        replace(d, hop_s=hop_s, compute=d.compute.with_piece(0.002)) for d in tb.devices
    )
    return replace(tb, devices=devices)


def test_variants_take_away_only_what_they_name() -> None:
    tb = _with_hops(fake_testbed([4.0, 3.0, 2.0, 1.0], [100.0] * 4), 0.008)
    free = free_links(tb)
    assert all(k.bandwidth == float("inf") and k.rtt == 0.0 for k in free.links)
    assert free.devices == tb.devices
    picked = no_pickup(tb)
    assert all(d.hop_s == 0.0 for d in picked.devices) and picked.links == tb.links
    assert [d.compute for d in picked.devices] == [d.compute for d in tb.devices]
    fixed = no_fixed(tb)
    for before, after in zip(tb.devices, fixed.devices, strict=True):
        assert after.compute.piece_s == 0.0 and after.hop_s == before.hop_s
        for kind, fit in after.compute.fits.items():
            assert fit.b == 0.0 and fit.a == before.compute.fits[kind].a
    bare = none_of_these(tb)
    assert bare.links == free.links
    assert all(d.hop_s == 0.0 and d.compute.piece_s == 0.0 for d in bare.devices)


@pytest.mark.parametrize("strategy", ["edgeci", "edgeci-halo"])
def test_no_variant_reads_slower_than_the_bids(strategy: str) -> None:
    spec = spec_for("vgg11", 64, 64)
    rnd = random.Random(7)
    for _ in range(3):
        tb = _with_hops(random_testbed(rnd, 4), rnd.uniform(0.0, 0.02))
        own = plan(strategy, spec, tb)
        found = bounds(strategy, spec, tb, own)
        assert [b.name for b in found] == ["as bid", *COSTS]
        as_bid = found[0]
        # The plan a request ran is at hand: the bound is never slower than it.
        assert as_bid.seconds <= simulate(own, spec, tb).latency + 1e-12
        for b in found[1:]:
            assert b.seconds <= as_bid.seconds + 1e-12, b
        # Each figure is a plan's simulated latency on its variant of the bids.
        bare = found[-1]
        fresh = plan(strategy, spec, none_of_these(tb))
        if bare.fresh:
            assert bare.seconds == pytest.approx(simulate(fresh, spec, none_of_these(tb)).latency)


def test_free_links_lift_a_link_bound_plan() -> None:
    # Slow links: the plan is held back by them, and free links lift it a long way.
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([4.0, 4.0, 4.0, 4.0], [2.0] * 4)
    found = {b.name: b for b in bounds("edgeci", spec, tb)}
    assert found["links free"].seconds < 0.8 * found["as bid"].seconds
    assert found["none of these"].seconds <= found["links free"].seconds + 1e-12


def test_alone_and_ideal_come_from_the_same_bids() -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([4.0, 3.0, 2.0, 1.0], [100.0] * 4)
    assert ideal_speedup(tb) == pytest.approx(10.0 / 4.0, rel=0.05)
    local = plan("local", spec, tb)
    assert alone_seconds(spec, tb) == simulate(local, spec, tb).latency
    assert {p.device for st in local.stages for p in st.parts} == {tb.auctioneer}


def test_the_benchmark_reads_a_kept_trace(tmp_path: Path) -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = _with_hops(fake_testbed([4.0, 3.0, 2.0, 1.0], [100.0] * 4), 0.005)
    own = plan("edgeci-halo", spec, tb)
    doc = own.to_dict()
    doc["testbed"] = tb.to_dict()
    doc["planned_spec"] = {"input_shape": [3, 64, 64], "input_itemsize": 1, "wire_fraction": []}
    path = tmp_path / "vgg11-edgeci-halo-00.json"
    path.write_text(json.dumps({"plan": doc}))
    got = plan_bound.trace_bounds(path, local_ms=500.0, ideal=2.5)
    assert got["exact_bytes"] and got["against"] == "measured local"
    mine = replace(spec, input_itemsize=1)
    want = bounds("edgeci-halo", mine, tb, own)
    assert [r["ms"] for r in got["bounds"]] == pytest.approx([b.seconds * 1e3 for b in want])
    first = got["bounds"][0]
    assert first["efficiency"] == pytest.approx(500.0 / first["ms"] / 2.5)
    assert "the best plan predicts" in plan_bound.summary(got)
    assert plan_bound.main([str(path), "--json"]) == 0
    # A trace from before the planned bytes were kept still reads, and says so.
    del doc["planned_spec"]
    path.write_text(json.dumps({"plan": doc}))
    with pytest.raises(ValueError):  # its model is vgg11 at 64 px, not the default size
        plan_bound.trace_bounds(path)

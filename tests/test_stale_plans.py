"""benchmarks/stale_plans.py: a traced request's plan priced on its own bids against a
plan made afresh for them."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from edgeci_p2p.core import cost
from edgeci_p2p.core.density import with_zeros
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from tests.planfakes import fake_testbed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import stale_plans


def _trace(path: Path, made_on: cost.Testbed, bids: cost.Testbed, spec: ModelSpec) -> None:
    """A trace as benchmarks/cluster.py keeps it: the plan, and the bids it ran on."""
    used = plan("edgeci", spec, made_on)
    path.write_text(json.dumps({"plan": {**used.to_dict(), "testbed": bids.to_dict()}}))


def test_an_old_plan_is_priced_on_the_requests_bids_against_a_fresh_one(tmp_path: Path) -> None:
    spec = dataclasses.replace(with_zeros(spec_for("vgg11", 64, 64), 0.5), input_itemsize=1)
    old = fake_testbed([4.0, 2.0, 1.0], [50, 50, 50])
    moved = fake_testbed([4.0, 2.0, 0.25], [50, 50, 50])  # the third peer slowed 4x
    _trace(tmp_path / "t-00.json", old, moved, spec)
    doc = json.loads((tmp_path / "t-00.json").read_text())
    got = stale_plans.staleness(doc, spec)
    assert got is not None
    used = plan("edgeci", spec, old)
    fresh = plan("edgeci", spec, moved)
    assert got["in_use_ms"] == simulate(used, spec, moved).latency * 1e3
    assert fresh.predicted is not None and got["fresh_ms"] == fresh.predicted * 1e3
    assert got["stale"] > 0.0  # made for a faster peer: slower on the moved bids
    assert not got["matches"]  # its stored prediction was made on the old bids
    # Its own bids: the stored prediction re-simulates, and it is as good as fresh.
    _trace(tmp_path / "t-01.json", old, old, spec)
    same = stale_plans.staleness(json.loads((tmp_path / "t-01.json").read_text()), spec)
    assert same is not None and same["matches"] and abs(same["stale"]) < 1e-9


def test_a_request_run_whole_here_has_no_bids_to_price(tmp_path: Path) -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([4.0, 2.0, 1.0], [50, 50, 50])
    local = plan("local", spec, tb)
    doc = {"plan": {**local.to_dict(), "devices": [tb.names[0]]}}
    assert stale_plans.staleness(doc, spec) is None
    with pytest.raises(SystemExit):  # no trace matches: an error, not an empty table
        stale_plans.main([str(tmp_path / "none-*.json")])

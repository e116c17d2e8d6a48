"""benchmarks/plan_ceiling.py: a kept trace's plan replayed as the daemon's pieces, each
worker waiting for what the daemon would wait for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgeci_p2p.core.geometry import trace
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from tests.planfakes import fake_testbed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import plan_ceiling


def _halo_plan() -> Plan:
    spec = spec_for("vgg11", 64, 64)
    p = plan("edgeci-halo", spec, fake_testbed([4.0, 3.0, 2.0, 1.0], [100] * 4))
    assert any(s.transfer == "halo" for s in p.stages) and len(p.devices) == 4
    return p


def test_each_device_computes_its_parts_once_edge_pieces_first_cut() -> None:
    spec, p = spec_for("vgg11", 64, 64), _halo_plan()
    cut = 0
    for d in range(len(p.devices)):
        stages = plan_ceiling.pieces_of(spec, p, d)
        assert len(stages) == len(p.stages)
        for st, calls in zip(p.stages, stages, strict=True):
            mine = [q.region for q in st.parts if q.device == d]
            rows = sorted((c.out.rows.start, c.out.rows.stop) for c in calls)
            want = sorted((r.rows.start, r.rows.stop) for r in mine)
            # The pieces tile the device's parts: every output row once, nothing more.
            covered = [i for a, b in rows for i in range(a, b)]
            assert sorted(covered) == [i for a, b in want for i in range(a, b)]
            assert all((c.start, c.stop) == (st.start, st.stop) for c in calls)
            cut += len(calls) > len(mine)
    assert cut > 0  # some strip of a halo segment was cut edge first, as the daemon cuts


def test_a_worker_waits_for_the_strips_it_reads_after_a_halo_and_for_all_after_a_gather() -> None:
    spec, p = spec_for("vgg11", 64, 64), _halo_plan()
    deps = plan_ceiling.waits_for(spec, p)
    n = len(p.devices)
    assert all(len(per) == len(p.stages) and per[0] == set() for per in deps)
    for s in range(1, len(p.stages)):
        prev, st = p.stages[s - 1], p.stages[s]
        for d in range(n):
            mine = [q for q in st.parts if q.device == d]
            if not mine:
                assert deps[d][s] == set()  # nothing to compute: nothing to wait for
            elif prev.transfer != "halo":
                assert deps[d][s] == set(range(n)) - {d}
            else:
                for q in prev.parts:
                    if q.device == d:
                        continue
                    reads = any(
                        q.region.rows.start
                        < (need := trace(spec, st.start, st.stop, m.region).need.rows).stop
                        and need.start < q.region.rows.stop
                        for m in mine
                    )
                    assert (q.device in deps[d][s]) == reads
                assert deps[d][s] < set(range(n)) - {d} or n == 2  # neighbours, not all


def test_the_auctioneer_gets_the_largest_quota_the_others_go_by_their_bids(
    tmp_path: Path,
) -> None:
    spec = spec_for("vgg11", 64, 64)
    # The auctioneer (device 0) bids slower than the second device: its own bid is
    # priced up by its loop's share; it still ran on the largest quota.
    speeds = [2.0, 4.0, 1.0]
    tb = fake_testbed(speeds, [50, 50, 50])
    p = plan("edgeci", spec, tb)
    assert p.devices[p.auctioneer] == tb.names[0]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"plan": {**p.to_dict(), "testbed": tb.to_dict()}}))
    got, rank = plan_ceiling.load_plan(path)
    assert got.stages == p.stages and str(got.testbed) == tb.name
    want = {tb.names[0]: 0, tb.names[1]: 1, tb.names[2]: 2}
    assert rank == [want[n] for n in p.devices]
    path.write_text(json.dumps({"plan": p.to_dict()}))
    with pytest.raises(SystemExit, match="no bids"):
        plan_ceiling.load_plan(path)

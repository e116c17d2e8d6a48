"""benchmarks/trace_scatter.py: when each slab of a gather stage's scatter arrived,
against the simulator's arrival on the bids the request was planned with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgeci_p2p.core.sim import simulate
from edgeci_p2p.core.timeline import Span, Timeline
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from edgeci_p2p.policy.tile_ids import GatherTile, strip_job_id
from tests.planfakes import fake_testbed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import trace_scatter


def _kept(tmp_path: Path, name: str, late_ms: float) -> tuple[Path, dict[tuple[int, int], float]]:
    """A traced VGG-11 ``edgeci`` request whose stages 0 and 1 scatter at 0.1 s and 0.3 s:
    sends 1 ms apart in part order, each remote slab queued on its peer ``late_ms`` ms
    after its place's 10 ms; and a strip job's queue span, which is not a gather tile."""
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([4.0, 3.0, 2.0, 1.0], [100.0] * 4)
    own = plan("edgeci", spec, tb)
    nodes, aid = own.devices, own.auctioneer
    spans = [Span(nodes[1], "queue", 0.5, 0.51, "wait", stage=2, tile=strip_job_id(2, 1))]
    want: dict[tuple[int, int], float] = {}
    for si, t0 in ((0, 0.1), (1, 0.3)):
        remote = [(pi, p) for pi, p in enumerate(own.stages[si].parts) if p.device != aid]
        for place, (pi, p) in enumerate(remote):
            tile = GatherTile(si, pi).base
            spans.append(Span(nodes[aid], "send", t0 + place * 1e-3, t0 + 0.002, "send", si, tile))
            at = t0 + (10.0 * (place + 1) + late_ms) / 1e3
            spans.append(Span(nodes[p.device], "queue", at, at + 1e-4, "wait", si, tile))
            want[(si, place)] = (at - t0) * 1e3
    doc = own.to_dict()
    doc["testbed"] = tb.to_dict()
    doc["planned_spec"] = {"input_shape": [3, 64, 64], "input_itemsize": 1, "wire_fraction": []}
    path = tmp_path / name
    path.write_text(json.dumps({"plan": doc, "timeline": Timeline(0.0, spans).to_dict()}))
    return path, want


def test_each_slab_against_the_simulator_in_send_order(tmp_path: Path) -> None:
    path, want = _kept(tmp_path, "vgg11-edgeci-00.json", 0.0)
    doc = json.loads(path.read_text())
    rows = trace_scatter.scatters(doc)
    assert {(r["stage"], r["place"]): r["measured_ms"] for r in rows} == pytest.approx(want)
    # Planned: the simulator's arrival of that part's slab after the stage's first send.
    spec = trace_scatter.trace_spec(doc["plan"])[0]
    own = trace_scatter.Plan.from_dict(doc["plan"])
    events = simulate(own, spec, trace_scatter.Testbed.from_dict(doc["plan"]["testbed"])).events
    for r in rows:
        st = own.stages[r["stage"]]
        p0 = min(e.start for e in events if e.stage == r["stage"] and e.lane == "send")
        part = next(p for p in st.parts if own.devices[p.device] == r["peer"])
        label = f"[{st.start},{st.stop}) {part.region.rows.start}:{part.region.rows.stop}"
        (stop,) = [
            e.stop
            for e in events
            if e.stage == r["stage"] and e.lane == "recv" and e.label == label
            and e.device == part.device
        ]  # fmt: skip
        assert r["planned_ms"] == pytest.approx((stop - p0) * 1e3)
    # In the plan's order, each later than the one before it.
    for si in (0, 1):
        planned = [r["planned_ms"] for r in rows if r["stage"] == si]
        assert len(planned) >= 2 and planned == sorted(planned)


def test_medians_over_traces_per_stage_and_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, late in enumerate((0.0, 4.0, 20.0)):
        _kept(tmp_path, f"vgg11-edgeci-0{i}.json", late)
    rows = trace_scatter.table(sorted(str(p) for p in tmp_path.glob("*.json")))
    first = next(r for r in rows if (r["stage"], r["place"]) == (1, 0))
    assert first["n"] == 3 and first["measured_ms"] == pytest.approx(14.0)  # 10 + median 4
    assert first["measured_range_ms"] == pytest.approx([10.0, 30.0])
    assert trace_scatter.main([str(tmp_path / "*.json")]) == 0
    assert "arrival of each slab" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        trace_scatter.main([str(tmp_path / "none-*.json")])

"""benchmarks/trace_stages.py: medians per peer and plan stage over traced requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgeci_p2p.core.timeline import Span, Timeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import trace_stages


def _trace(path: Path, compute_ms: float, wait_ms: float) -> None:
    spans = [
        Span("n0", "compute", 0.0, compute_ms / 1e3, stage=0, tile=1, predicted=(0.0, 0.010)),
        Span("n1", "halo-wait", 0.0, wait_ms / 1e3, "wait", stage=1, tile=2),
        Span("n1", "send", 0.0, 0.001, "send", stage=1, tile=2),  # not a step it reads
        Span("zz", "head", 0.05, 0.06, stage=2, predicted=(0.04, 0.05)),  # not in the plan
    ]
    doc = {"timeline": Timeline(0.0, spans).to_dict(), "plan": {"nodes": ["n0", "n1"], "text": "p"}}
    path.write_text(json.dumps(doc))


def test_medians_per_peer_and_stage_against_the_plan(tmp_path: Path) -> None:
    for i, (c, w) in enumerate([(12.0, 3.0), (14.0, 5.0), (30.0, 4.0)]):
        _trace(tmp_path / f"t-{i}.json", c, w)
    text, rows = trace_stages.stage_table(sorted(str(p) for p in tmp_path.glob("t-*.json")))
    assert text == "p"
    by = {(r["peer"], r["stage"], r["step"]): r for r in rows}
    assert set(by) == {("0", 0, "compute"), ("1", 1, "halo-wait"), ("zz", 2, "head")}
    c = by[("0", 0, "compute")]
    assert (
        c["n"] == 3 and c["ms"] == pytest.approx(14.0) and c["predicted_ms"] == pytest.approx(10.0)
    )
    assert c["end_ms"] == pytest.approx(14.0) and c["predicted_end_ms"] == pytest.approx(10.0)
    w = by[("1", 1, "halo-wait")]
    assert w["ms"] == pytest.approx(4.0) and w["predicted_ms"] is None
    assert [r["stage"] for r in rows] == sorted(r["stage"] for r in rows)


def test_no_matching_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        trace_stages.main([str(tmp_path / "none-*.json")])
    assert "no trace files match" in capsys.readouterr().err


def test_per_peer_spread_of_compute_against_the_plan_and_halo_waits(tmp_path: Path) -> None:
    # Peer 0's stage 0 is two pieces (an edge piece and the rest), summed per request.
    for i, (a, b, w) in enumerate([(4.0, 4.0, 3.0), (5.0, 7.0, 5.0), (10.0, 10.0, 4.0)]):
        spans = [
            Span("n0", "compute", 0.0, a / 1e3, stage=0, tile=1, predicted=(0.0, 0.010)),
            Span("n0", "compute", 0.01, 0.01 + b / 1e3, stage=0, tile=1, predicted=(0.0, 0.010)),
            Span("n1", "halo-wait", 0.0, w / 1e3, "wait", stage=1, tile=2),
            Span("n1", "compute", 0.0, 0.002, stage=1, tile=2),  # no prediction: left out
        ]
        doc = {"timeline": Timeline(0.0, spans).to_dict(), "plan": {"nodes": ["n0", "n1"]}}
        (tmp_path / f"t-{i}.json").write_text(json.dumps(doc))
    peers = {r["peer"]: r for r in trace_stages.peer_table(sorted(map(str, tmp_path.iterdir())))}
    assert peers["0"]["n"] == 3
    assert (peers["0"]["p10"], peers["0"]["p50"], peers["0"]["p90"]) == pytest.approx(
        (0.8, 1.2, 2.0)
    )
    assert peers["0"]["halo_wait_ms_per_request"] == 0.0
    assert peers["1"]["n"] == 0 and peers["1"]["p50"] is None
    assert peers["1"]["halo_wait_ms_per_request"] == pytest.approx(4.0)

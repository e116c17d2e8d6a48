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

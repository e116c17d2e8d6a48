"""benchmarks/cluster.py's report: efficiency as a fraction of the compute ceiling
measured in the same invocation, and the closing note."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cluster import Row, closing_note, diagnostics, main, summarise, table, with_ceiling


def _rec(strategy: str, latency: float, predicted: float | None = None) -> dict[str, object]:
    return {
        "model": "vgg16", "strategy": strategy, "latency_s": latency, "total_s": latency,
        "auction_s": 0.0, "head_s": 0.0, "transfer_s": 0.0, "bytes": 0.0,
        "predicted_s": predicted, "devices": [0], "stages": 1,
    }  # fmt: skip


RESULTS = (
    [_rec("local", t, 1.0) for t in (0.98, 1.0, 1.02)]
    + [_rec("edgeci", t, 0.5) for t in (0.49, 0.5, 0.51)]
    + [_rec("aofl", t, 0.6) for t in (0.55, 0.6, 0.65)]
)
CEILING = {
    "vgg16": {
        "k": 10, "local_ms": 900.0, "ceiling": 0.8, "ceiling_mode": "halo",
        "modes": {"free": {"efficiency": 0.76}, "halo": {"efficiency": 0.8}},
    }
}  # fmt: skip


def test_ceiling_efficiency_is_efficiency_over_the_ceiling() -> None:
    rows = {r.strategy: r for r in with_ceiling(summarise(RESULTS, ideal=2.5), CEILING)}
    assert rows["edgeci"].efficiency == 0.8  # 2x of an ideal 2.5
    assert rows["edgeci"].ceiling_efficiency == 1.0
    assert rows["local"].ceiling_efficiency == pytest.approx(0.5)
    # No ceiling for a model (not measured, or --no-ceiling): None, not a guess.
    other = Row("resnet34", "edgeci", 100.0, 1.2, 0.48, 0.0, None)
    assert with_ceiling([other], CEILING)[0].ceiling_efficiency is None
    assert with_ceiling([other], {})[0].ceiling_efficiency is None


def test_the_table_and_the_closing_note_give_the_same_figures() -> None:
    rows = with_ceiling(summarise(RESULTS, ideal=2.5), CEILING)
    diag = diagnostics(RESULTS)
    assert "of ceil" in table(rows, diag, shaped=True).splitlines()[0]
    note = closing_note(rows, diag, CEILING)
    assert note[0].startswith("vgg16: compute ceiling") and "ceiling 0.80 (halo)" in note[0]
    assert "ours best edgeci 500 ms, efficiency 0.80 = 1.00 of the ceiling" in note[1]
    assert "prediction error 2.0%" in note[1]  # median of 2.0%, 0, 1.96%
    assert "best baseline aofl 600 ms, quartiles apart (495-505 vs 575-625)" in note[1]
    assert closing_note(rows, diag, {})[0].startswith("vgg16: fastest edgeci")
    # A strategy that ran on one peer says why, from its plans' decision notes.
    alone = [
        {**r, "devices": [0], "decision": "local: distributing predicted < 10% gain"}
        for r in RESULTS
    ]
    arows = with_ceiling(summarise(alone, ideal=2.5), {})
    anote = closing_note(arows, diagnostics(alone), {})
    assert "it ran on one peer (local: distributing predicted < 10% gain)" in anote[0]
    assert "it ran on one peer" not in closing_note(rows, diag, {})[0]


def test_homogeneous_too_many_peers_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import compute_ceiling

    monkeypatch.setattr(compute_ceiling, "machine_cores", lambda: [0, 1])
    monkeypatch.setattr("cluster.machine_cores", lambda: [0, 1])
    assert main(["--homogeneous", "4", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "refused: --homogeneous 4 needs 5 cores" in err


def test_traced_results_give_medians_of_where_the_time_went() -> None:
    from cluster import time_table, where_the_time_went

    from edgeci_p2p.core.explain import CATEGORIES

    def where(compute: float, transfer: float) -> dict[str, list[float | None]]:
        w: dict[str, list[float | None]] = {c: [0.0, None] for c in CATEGORIES}
        w["compute"] = [compute, compute * 0.8]
        w["transfer"] = [transfer, 0.01]
        return w

    results = [
        {"model": "vgg16", "strategy": "edgeci", "where": where(0.1, 0.02)},
        {"model": "vgg16", "strategy": "edgeci", "where": where(0.3, 0.04)},
        {"model": "vgg16", "strategy": "edgeci", "where": where(0.2, 0.03)},
        {"model": "vgg16", "strategy": "local", "where": None},  # not traced: left out
    ]
    got = where_the_time_went(results)
    assert list(got["vgg16"]) == ["edgeci"]
    cats = got["vgg16"]["edgeci"]
    assert cats["compute"] == [200.0, 160.0] and cats["transfer"] == [30.0, 10.0]
    assert cats["planning"] == [0.0, None]
    text = time_table(got)
    assert "200/160" in text and "30/10" in text and "0/-" in text


def test_the_report_counts_requests_that_ran_an_earlier_rounds_plan() -> None:
    from cluster import plan_age_lines, plan_ages

    def run(made: str, own: str) -> dict[str, object]:
        return {
            **_rec("edgeci-halo", 0.5, 0.45),
            "devices": [0, 1, 2, 3],
            "plan_text": f"edgeci-halo plan for vgg16 on bids:{made}: 5 stage(s), predicted 450 ms",
            "believed": {"name": f"bids:{own}"},
        }

    rs = [run("aa01", "aa01"), run("aa01", "bb02"), run("aa01", "cc03"), run("dd04", "dd04")]
    assert plan_ages(rs) == (2, 4, 2)
    assert plan_ages([_rec("local", 1.0)]) == (0, 0, 0)  # no names: nothing counted
    diag = diagnostics(rs + [_rec("local", t, 1.0) for t in (0.98, 1.0)])
    lines = plan_age_lines(diag)
    assert lines == [
        "vgg16 edgeci-halo: 2 of 4 requests ran a plan made for an earlier round's bids "
        "(2 plan(s) in all; each new one is made off the requests' path, on a peer or when "
        "this one idles)"
    ]


def test_the_closing_note_splits_the_gap_from_the_ceiling_with_the_replayed_plan() -> None:
    rows = with_ceiling(summarise(RESULTS, ideal=2.5), CEILING)
    diag = diagnostics(RESULTS)
    # A run where the best of ours measured 0.5 against the ceiling's 0.80.
    low = [replace(r, efficiency=0.5) if r.strategy == "edgeci" else r for r in rows]
    replayed = {
        "vgg16": {
            "strategy": "edgeci", "k": 10, "plan_ms": 600.0, "alone_ms": 1000.0,
            "efficiency": 0.7,
        }
    }  # fmt: skip
    note = closing_note(low, diag, CEILING, replayed)
    line = next(x for x in note if "replayed" in x)
    # (0.80 - 0.70) / (0.80 - 0.50): a third of the lost efficiency is the plan's.
    assert "600 ms against 1000 ms alone, efficiency 0.70" in line
    assert "the plan's compute is 33%, the runtime" in line
    assert not any("replayed" in x for x in closing_note(low, diag, CEILING))


def test_the_replayed_plan_is_the_last_distributed_one_of_the_best_of_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    import cluster

    rows = summarise(RESULTS, ideal=2.5)
    diag = [{**d, "devices": [0, 1]} for d in diagnostics(RESULTS)]

    def kept(name: str, devices: int) -> None:
        (tmp_path / name).write_text(json.dumps({"plan": {"devices": ["n"] * devices}}))

    kept("vgg16-edgeci-00.json", 2)
    kept("vgg16-edgeci-01.json", 1)  # ran alone: nothing to replay
    kept("vgg16-edgeci-halo-05.json", 2)  # another strategy, whose name starts alike
    got: list[Path] = []
    monkeypatch.setattr(
        cluster, "replay", lambda path, *a, **kw: got.append(path) or {"efficiency": 0.7}
    )
    args = argparse.Namespace(traces=tmp_path, ceiling_k=3)
    layout = argparse.Namespace(peers=[], period_us=10_000, cgroup=None, cpu_weight=None)
    out = cluster.measure_plan_ceilings(args, layout, 2.5, rows, diag)  # type: ignore[arg-type]
    assert got == [tmp_path / "vgg16-edgeci-00.json"] and out == {"vgg16": {"efficiency": 0.7}}


def test_each_of_ours_is_planned_again_on_its_last_distributed_bids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cluster

    rows = summarise(RESULTS, ideal=2.5)

    def kept(name: str, devices: int) -> None:
        (tmp_path / name).write_text(json.dumps({"plan": {"devices": ["n"] * devices}}))

    kept("vgg16-edgeci-00.json", 2)
    kept("vgg16-edgeci-01.json", 1)  # ran alone: no bids of a distributed round
    kept("vgg16-edgeci-halo-03.json", 3)
    calls: list[tuple[str, float | None, float]] = []

    def bounds(path: Path, local_ms: float | None, ideal: float) -> dict[str, object]:
        calls.append((path.name, local_ms, ideal))
        return {"trace": path.name}

    monkeypatch.setattr(cluster, "trace_bounds", bounds)
    out = cluster.measure_plan_bounds(tmp_path, 2.5, rows)
    # Against the same run's local median (1.0 s), at the layout's ideal.
    assert calls == [
        ("vgg16-edgeci-00.json", 1000.0, 2.5),
        ("vgg16-edgeci-halo-03.json", 1000.0, 2.5),
    ]
    assert out == {
        "vgg16": [{"trace": "vgg16-edgeci-00.json"}, {"trace": "vgg16-edgeci-halo-03.json"}]
    }

"""A request's timeline without a daemon: clock offsets, the dict form, coverage, Chrome
trace events, the critical path, where the time went, and the charts and files that
``edgeci infer --trace/--gantt/--explain`` makes of it (timelines built by hand)."""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from edgeci_p2p.core.explain import (
    CATEGORIES,
    explain,
    head_stage,
    predicted_window,
    where_the_time_went,
)
from edgeci_p2p.core.timeline import ClockSync, Offset, Span, Timeline, critical_path

MS = 1e-3


def request() -> Timeline:
    """A gather stage over two peers, then the head on the auctioneer ``a``: ``b``'s
    tile is the slower one, and ``b`` began queueing it before ``a``'s send returned
    (a busy sender); ``a``'s waits enclose the peers' own steps."""
    tl = Timeline(100.0)
    add = tl.spans.append
    add(Span("a", "decode", 0 * MS, 10 * MS, "compute"))
    add(Span("a", "auction", 10 * MS, 30 * MS, "control"))
    add(Span("a", "cut", 30 * MS, 31 * MS, "control", 0))
    add(Span("a", "send", 31 * MS, 35 * MS, "send", 0, 0, (30 * MS, 32 * MS)))
    add(Span("a", "send", 35 * MS, 38 * MS, "send", 0, 1, (30 * MS, 32 * MS)))
    add(Span("a", "wait", 35 * MS, 83 * MS, "wait", 0, 0))
    add(Span("a", "wait", 38 * MS, 72 * MS, "wait", 0, 1))
    add(Span("b", "queue", 34 * MS, 36 * MS, "wait", 0, 0))
    add(Span("b", "compute", 36 * MS, 80 * MS, "compute", 0, 0, (33 * MS, 70 * MS)))
    add(Span("c", "queue", 40 * MS, 41 * MS, "wait", 0, 1))
    add(Span("c", "compute", 41 * MS, 70 * MS, "compute", 0, 1, (33 * MS, 60 * MS)))
    add(Span("a", "stitch", 84 * MS, 86 * MS, "control", 0))
    add(Span("a", "queue", 86 * MS, 87 * MS, "wait", 1))
    add(Span("a", "head", 87 * MS, 90 * MS, "compute", 1, None, (72 * MS, 75 * MS)))
    add(Span("a", "result", 90 * MS, 92 * MS, "control"))
    tl.offsets = {"b": Offset(0.5, 0.2 * MS), "c": Offset(-1.25, 0.1 * MS)}
    return tl


NAMES = {"a": "entry", "b": "laptop", "c": "pi"}


# ---- clocks ------------------------------------------------------------------------------------


def test_clock_sync_takes_the_shortest_round_trip_and_half_of_it_as_the_error() -> None:
    assert ClockSync().estimate is None  # no exchange yet
    sync = ClockSync()
    sync.sample(0.0, 10.5, 1.0)  # rtt 1.0: offset 10.0
    sync.sample(2.0, 12.3, 2.2)  # rtt 0.2: offset 12.3 - 2.1 = 10.2
    sync.sample(5.0, 15.9, 5.8)  # rtt 0.8: offset 10.5
    est = sync.estimate
    assert est is not None
    assert est.offset == pytest.approx(10.2)
    assert est.error == pytest.approx(0.1)


def test_clock_sync_forgets_all_but_the_last_samples() -> None:
    sync = ClockSync(keep=2)
    sync.sample(0.0, 5.0, 0.01)  # the best, then pushed out
    sync.sample(1.0, 6.5, 1.5)
    sync.sample(2.0, 7.9, 2.2)
    est = sync.estimate
    assert est is not None
    assert est.offset == pytest.approx(7.9 - 2.1)
    assert est.error == pytest.approx(0.1)


def test_a_clock_that_runs_backwards_counts_as_no_round_trip() -> None:
    sync = ClockSync()
    sync.sample(3.0, 4.0, 2.9)
    est = sync.estimate
    assert est is not None and est.error == 0.0


def test_remote_spans_move_onto_the_auctioneers_clock_and_need_an_offset() -> None:
    tl = Timeline(t0=100.0)
    tl.add("a", "cut", 100.010, 100.012, "control", 0)
    got = tl.add_remote("b", "compute", 50.020, 50.030, Offset(-50.0, 0.001), "compute", 0, 7)
    assert got is not None
    assert got.start == pytest.approx(0.020) and got.stop == pytest.approx(0.030)
    assert (got.node, got.stage, got.tile) == ("b", 0, 7)
    assert tl.add_remote("c", "compute", 1.0, 2.0, None) is None  # no offset yet: dropped
    assert [s.node for s in tl.spans] == ["a", "b"]
    assert tl.offsets == {"b": Offset(-50.0, 0.001)}


# ---- the dict form and coverage ----------------------------------------------------------------


def test_a_timeline_round_trips_through_its_dict_form() -> None:
    tl = request()
    d = tl.to_dict()
    again = Timeline.from_dict(json.loads(json.dumps(d)))  # as plain data on the wire
    assert again == tl
    assert again.spans[3].predicted == (30 * MS, 32 * MS)
    assert again.spans[0].predicted is None and again.spans[0].stage is None


def test_a_span_is_eight_values() -> None:
    with pytest.raises(ValueError, match="8 values"):
        Span.from_list(["a", "compute", 0.0, 1.0])


def test_covered_merges_overlapping_and_nested_spans() -> None:
    tl = Timeline(0.0)
    for a, b, lane in [(0, 1, "compute"), (0.5, 2, "wait"), (3, 4, "control"), (3.2, 3.5, "send"),
                       (10, 11, "compute")]:  # fmt: skip
        tl.spans.append(Span("a", "x", a, b, lane))
    tl.spans.append(Span("b", "x", 0, 100, "compute"))
    assert tl.covered("a") == pytest.approx(4.0)
    assert tl.covered("a", ["compute"]) == pytest.approx(2.0)
    assert tl.covered("a", ["control", "send"]) == pytest.approx(1.0)
    assert tl.covered("nobody") == 0.0
    assert tl.covered("a") <= tl.end


def test_the_origin_is_the_node_that_answered() -> None:
    tl = request()
    assert tl.origin == "a"
    assert tl.nodes == ["a", "b", "c"]
    tl.spans.insert(0, Span("c", "queue", 0.0, 0.001, "wait", 0, 1))
    assert tl.origin == "a" and tl.nodes[0] == "a"
    assert Timeline(0.0).origin is None


# ---- Chrome trace events -----------------------------------------------------------------------


def test_chrome_trace_events_are_valid_and_name_every_process_and_thread() -> None:
    tl = request()
    doc = tl.chrome(NAMES)
    json.loads(json.dumps(doc))  # plain JSON
    events = doc["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]
    assert {e["ph"] for e in events} == {"X", "M"}
    for e in complete:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= e.keys()
        assert isinstance(e["ts"], float) and e["dur"] >= 0
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert {e["pid"] for e in complete} <= processes.keys()
    assert {(e["pid"], e["tid"]) for e in complete} <= threads.keys()
    assert processes[1] == "entry"  # the auctioneer first
    assert processes[2].startswith("laptop (clock offset +500.00 ms, +/- 0.20 ms")
    assert processes[3].startswith("pi (clock offset -1250.00 ms")
    # Every measured span once, in microseconds; each distinct prediction once.
    measured = [e for e in complete if not e["name"].endswith("(plan)")]
    assert len(measured) == len(tl.spans)
    head = next(e for e in measured if e["name"] == "head")
    assert head["ts"] == pytest.approx(87_000) and head["dur"] == pytest.approx(3_000)
    assert head["args"]["predicted_ms"] == [72.0, 75.0]
    plan = [e for e in complete if e["name"].endswith("(plan)")]
    assert sorted((e["pid"], e["name"], e["ts"]) for e in plan) == [
        (1, "head (plan)", pytest.approx(72_000)),
        (1, "send (plan)", pytest.approx(30_000)),  # two tiles' sends, one prediction
        (2, "compute (plan)", pytest.approx(33_000)),
        (3, "compute (plan)", pytest.approx(33_000)),
    ]
    assert {threads[(e["pid"], e["tid"])] for e in plan} == {"compute (plan)", "send (plan)"}


def test_overlapping_spans_of_a_lane_go_to_threads_of_their_own() -> None:
    """A trace viewer nests the complete events of a thread: no two may overlap
    partially there (``a`` waits for two peers at once)."""
    doc = request().chrome()
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            by_thread[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for ivs in by_thread.values():
        ivs.sort()
        for (_, stop), (start, _) in itertools.pairwise(ivs):
            assert start >= stop - 1e-6
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {"wait", "wait 2", "compute", "send", "control"} <= names


# ---- the critical path -------------------------------------------------------------------------


def test_the_critical_path_goes_through_the_slower_peers_own_steps() -> None:
    path = request().critical_path()
    assert [(s.node, s.name) for s in path] == [
        ("a", "decode"),
        ("a", "auction"),
        ("a", "cut"),
        ("a", "send"),  # the send of b's tile, though it returned after b began
        ("b", "queue"),
        ("b", "compute"),  # not a's wait, which only encloses it
        ("a", "stitch"),
        ("a", "queue"),
        ("a", "head"),
        ("a", "result"),
    ]
    assert path[3].tile == 0


def test_without_a_peers_steps_its_wait_is_on_the_path() -> None:
    tl = request()
    tl.spans = [s for s in tl.spans if s.node != "b"]  # b reported nothing
    path = tl.critical_path()
    assert [(s.node, s.name, s.tile) for s in path][2:6] == [
        ("a", "cut", None),
        ("a", "send", 0),
        ("a", "wait", 0),
        ("a", "stitch", None),
    ]


def test_a_node_follows_its_own_steps_unless_it_waited_for_another() -> None:
    """A halo segment: the auctioneer runs its own strip (pieces and halo waits) while
    ``b`` runs the other, whose pieces end a little after ``a``'s own first ones."""
    own = 2**24
    spans = [
        Span("a", "auction", 0 * MS, 1 * MS, "control"),
        Span("a", "send", 1 * MS, 2 * MS, "send", 0, own + 1),
        Span("a", "wait", 2 * MS, 29 * MS, "wait", 0, own + 1),
        Span("b", "compute", 3 * MS, 10.5 * MS, "compute", 0, own + 1),
        Span("b", "compute", 10.5 * MS, 27 * MS, "compute", 0, own + 1),
        Span("a", "compute", 2 * MS, 10 * MS, "compute", 0, own),
        Span("a", "compute", 10.2 * MS, 14 * MS, "compute", 0, own),  # not after b's piece
        Span("a", "halo-wait", 14 * MS, 18 * MS, "wait", 0, own),
        Span("a", "compute", 18 * MS, 30 * MS, "compute", 0, own),
        Span("a", "stitch", 31 * MS, 32 * MS, "control", 1),
    ]
    names = [(s.node, s.name, round(s.start / MS, 1)) for s in critical_path(spans, "a")]
    assert names == [
        ("a", "auction", 0),
        ("a", "send", 1),
        ("a", "compute", 2),
        ("a", "compute", 10.2),
        ("a", "halo-wait", 14),
        ("a", "compute", 18),
        ("a", "stitch", 31),
    ]
    # When b's strip comes back last, the stitch waited for it: the chain goes there.
    late = [s for s in spans if s.name != "wait"] + [Span("a", "wait", 2 * MS, 30.5 * MS, "wait",
                                                          0, own + 1)]  # fmt: skip
    names = [(s.node, s.name, round(s.start / MS, 1)) for s in critical_path(late, "a")]
    assert names == [
        ("a", "auction", 0),
        ("a", "send", 1),
        ("b", "compute", 3),
        ("b", "compute", 10.5),
        ("a", "stitch", 31),
    ]
    # Times alone (a plan's spans): the latest-ending span on any node, each time.
    xyz = [Span("a", "x", 0, 10), Span("b", "y", 0, 12), Span("a", "z", 12.5, 20)]
    assert [s.name for s in critical_path(xyz, "a")] == ["x", "z"]
    assert [s.name for s in critical_path(xyz, causal=False)] == ["y", "z"]


def test_the_critical_path_of_spans_on_one_node_is_the_latest_chain() -> None:
    spans = [Span("a", "x", 0, 1), Span("a", "y", 0.5, 2), Span("a", "z", 2, 3),
             Span("a", "w", 1, 1.5)]  # fmt: skip
    assert [s.name for s in critical_path(spans)] == ["y", "z"]
    assert critical_path([]) == []


# ---- where the time went -----------------------------------------------------------------------


def test_where_the_time_went_adds_up_to_the_latency_and_to_the_prediction() -> None:
    tl = request()
    summary = where_the_time_went(tl)
    assert list(summary) == list(CATEGORIES)
    measured = {c: round(m / MS, 6) for c, (m, _) in summary.items()}
    assert measured == {
        "planning": 20.0,
        "decode": 10.0,
        "compute": 44.0,  # b's tile
        "transfer": 8.0,  # a's send (4), b's result back to a (4)
        "waiting": 2.0,  # b's queue after the send (1), a's queue for the head (1)
        "event_loop": 5.0,  # cut, stitch, result
        "head": 3.0,
    }
    assert sum(m for m, _ in summary.values()) == pytest.approx(tl.end)
    # The plan: a's send, b's tile, the head; from when the plan began (30 ms).
    predicted = {c: None if p is None else round(p / MS, 6) for c, (_, p) in summary.items()}
    assert predicted == {
        "planning": None,
        "decode": None,
        "compute": 37.0,
        "transfer": 5.0,  # the send (2), to b (1), back (2)
        "waiting": 0.0,
        "event_loop": 0.0,
        "head": 3.0,
    }
    window = predicted_window(tl)
    assert window == (30 * MS, 75 * MS)
    assert sum(p or 0 for _, p in summary.values()) == pytest.approx(window[1] - window[0])


def test_a_head_job_on_a_peer_counts_as_head() -> None:
    tl = request()
    tl.spans = [s for s in tl.spans if s.name not in ("head", "result")]
    tl.spans += [
        Span("a", "send", 87 * MS, 88 * MS, "send", 1, 2**24 - 1),
        Span("a", "wait", 88 * MS, 99 * MS, "wait", 1, 2**24 - 1),
        Span("b", "compute", 90 * MS, 97 * MS, "compute", 1, 2**24 - 1),
        Span("a", "result", 99 * MS, 100 * MS, "control"),
    ]
    assert head_stage(tl) == 1
    summary = where_the_time_went(tl)
    assert summary["head"][0] == pytest.approx(7 * MS)
    assert summary["head"][1] is None or summary["head"][1] == 0.0
    assert sum(m for m, _ in summary.values()) == pytest.approx(tl.end)


def test_a_timeline_without_predictions_has_none() -> None:
    tl = Timeline(0.0, [Span("a", "compute", 0.0, 0.5, "compute", 0, 1),
                        Span("a", "result", 0.6, 0.7, "control")])  # fmt: skip
    summary = where_the_time_went(tl)
    assert all(p is None for _, p in summary.values())
    assert summary["compute"][0] == pytest.approx(0.5)
    assert summary["event_loop"][0] == pytest.approx(0.2)  # the gap, then the result
    assert predicted_window(tl) is None


def test_explain_lists_the_path_with_names_and_the_summary() -> None:
    lines = explain(request(), NAMES)
    text = "\n".join(lines)
    assert lines[0].startswith("critical path: 10 steps, 92.0 ms")
    assert "45.0 ms predicted" in lines[0]
    assert "laptop" in text and "compute (stage 0, tile 0)" in text
    assert "(transfer)" in text  # b's result on its way back
    row = next(line for line in lines if line.strip().startswith("compute "))
    assert row.split() == ["compute", "44.0", "ms", "37.0", "ms"]
    assert next(line for line in lines if line.strip().startswith("total")).split()[1] == "92.0"
    assert "clock offsets: laptop +500.00 ms +/- 0.20 ms" in text


def test_explain_gives_a_prediction_shared_by_several_steps_once() -> None:
    pred = (0.0, 20 * MS)
    tl = Timeline(0.0, [Span("a", "compute", 0, 5 * MS, "compute", 0, 9, pred),
                        Span("a", "halo-wait", 5 * MS, 6 * MS, "wait", 0, 9),
                        Span("a", "compute", 6 * MS, 9 * MS, "compute", 0, 9, pred)])  # fmt: skip
    rows = [line.split() for line in explain(tl) if "compute (stage 0" in line]
    assert [r[2] for r in rows] == ["20.0", "same"]


# ---- the chart and the command's files ---------------------------------------------------------


def test_the_timeline_chart_renders(tmp_path: Path) -> None:
    from edgeci_p2p.gantt import draw_timeline

    out = draw_timeline(request(), tmp_path / "t.png", NAMES, title="resnet34, edgeci")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = Timeline(0.0, [Span("a", "compute", 0.0, 0.01), Span("x", "odd", 0.0, 0.01, "?")])
    assert draw_timeline(bare, tmp_path / "bare.png").stat().st_size > 0


def test_infer_writes_the_trace_and_the_chart_and_explains(tmp_path: Path) -> None:
    from edgeci_p2p.commands.infer import _traced

    args = argparse.Namespace(
        trace=tmp_path / "t.json", gantt=tmp_path / "t.png", explain=True,
        model="resnet34", strategy="edgeci",
    )  # fmt: skip
    plan: dict[str, Any] = {
        "model": "resnet34",
        "strategy": "edgeci",
        "text": "a plan",
        "nodes": ["a", "b", "c"],
        "testbed": {"devices": [{"name": "a-dev"}, {"name": "b-dev"}, {"name": "c-dev"}]},
    }
    out: dict[str, Any] = {}
    lines = _traced(args, request().to_dict(), plan, {"a": "entry"}, out)
    doc = json.loads((tmp_path / "t.json").read_text())
    processes = [e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"]
    assert processes[0] == "entry" and processes[1].startswith("b-dev ")  # testbed names else
    assert doc["otherData"]["model"] == "resnet34"
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert any(line.startswith("critical path") for line in lines)
    assert out["where_the_time_went_ms"]["compute"] == [44.0, 37.0]
    json.dumps(out)


def test_a_strips_share_of_fc1_counts_as_compute_as_the_plan_predicts_it() -> None:
    # fc1 folded into the last strips: the simulator prices each strip's share of it
    # inside the last stage's compute, so the measured fold goes there too (it had
    # counted as head: 33 ms measured against 10 predicted on the emulated cluster).
    tl = request()
    tl.spans = [s for s in tl.spans if not (s.node == "b" and s.name == "compute")]
    tl.spans += [
        Span("b", "compute", 36 * MS, 70 * MS, "compute", 0, 0, (33 * MS, 70 * MS)),
        Span("b", "fold", 70 * MS, 80 * MS, "compute", 0, 0),
    ]
    summary = where_the_time_went(tl)
    assert summary["head"][0] == pytest.approx(3 * MS)  # the head alone, as without a fold
    assert summary["compute"][0] == pytest.approx(44 * MS)  # b's strip and its fold
    assert sum(m for m, _ in summary.values()) == pytest.approx(tl.end)

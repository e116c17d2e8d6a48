"""The simulator: hand-checkable schedules, radio invariants, and agreement with geometry."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from edgeci_p2p.core.geometry import Region, Span, head_flops, trace
from edgeci_p2p.core.plan import Part, Plan, Stage, single_stage, strip_stage
from edgeci_p2p.core.sim import Event, Task, assign_by_pulling, run_stage, simulate
from edgeci_p2p.core.workload import StripTable, Workload
from edgeci_p2p.nn.spec import spec_for
from tests.planfakes import fake_testbed

SPEC = spec_for("vgg11", 32, 32)


def _plan(stages: list[Stage], n: int, aid: int = 0) -> Plan:
    return Plan(SPEC.name, "t", "fake", tuple(f"d{k}" for k in range(n)), tuple(stages), aid)


def test_local_plan_takes_compute_plus_head_and_moves_nothing() -> None:
    tb = fake_testbed([2.0, 1.0], [100, 100])
    res = simulate(_plan([single_stage(SPEC, 0, SPEC.n_units, 0)], 2), SPEC, tb)
    model = tb.devices[0].compute
    want = sum(
        model.seconds(u.unit.kind, u.flops)
        for u in trace(SPEC, 0, SPEC.n_units, Region(Span(0, 1), Span(0, 1))).units
    ) + model.seconds("head", head_flops(SPEC))
    assert res.bytes_moved == 0
    assert res.latency == pytest.approx(want, rel=1e-12)


def test_remote_single_device_pays_both_transfers() -> None:
    tb = fake_testbed([1.0, 5.0], [8.0, 8.0], rtt_ms=4.0)  # 1 MB/s
    res = simulate(_plan([single_stage(SPEC, 0, SPEC.n_units, 1)], 2), SPEC, tb)
    in_b = 3 * 32 * 32 * 4
    out_b = 512 * 1 * 1 * 4
    assert res.bytes_moved == in_b + out_b
    compute = res.busy(1, "compute")
    head = tb.devices[0].compute.seconds("head", head_flops(SPEC))
    assert res.latency == pytest.approx(in_b / 1e6 + out_b / 1e6 + 0.004 + compute + head)


def _radio(
    events: tuple[Event, ...], aid: int, lanes: tuple[str, ...]
) -> list[tuple[float, float]]:
    return sorted((e.start, e.stop) for e in events if e.device == aid and e.lane in lanes)


def _overlaps(spans: list[tuple[float, float]]) -> bool:
    return any(b[0] < a[1] - 1e-12 for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize("shared", [True, False])
def test_radio_and_device_invariants_hold_for_random_strip_plans(shared: bool) -> None:
    rnd = random.Random(7)
    for _ in range(20):
        n = rnd.randrange(2, 5)
        tb = fake_testbed(
            [rnd.uniform(1, 5) for _ in range(n)],
            [rnd.uniform(10, 100) for _ in range(n)],
            shared=shared,
            auctioneer=rnd.randrange(n),
        )
        stages = [
            strip_stage(SPEC, 0, 3, sorted(rnd.sample(range(1, 16), n - 1)), list(range(n))),
            strip_stage(SPEC, 3, SPEC.n_units, [], [rnd.randrange(n)]),
        ]
        res = simulate(_plan(stages, n, tb.auctioneer), SPEC, tb)
        aid = tb.auctioneer
        if shared:  # one half-duplex radio: nothing of the auctioneer's overlaps
            sends = _radio(res.events, aid, ("send",))
            # a gather occupies the radio for its sender's 'send' interval
            gathers = sorted(
                (e.start, e.stop) for e in res.events if e.lane == "send" and e.device != aid
            )
            assert not _overlaps(sorted(sends + gathers))
        for d in range(n):
            assert not _overlaps(
                sorted(
                    (e.start, e.stop) for e in res.events if e.device == d and e.lane == "compute"
                )
            )
        # stages are barriers
        ends = res.stage_ends
        first_stage_2 = min(e.start for e in res.events if e.stage == 1)
        assert first_stage_2 >= ends[0] - 1e-12
        assert res.latency >= ends[-1]


def test_full_duplex_overlaps_sends_and_receives_where_wifi_cannot() -> None:
    tasks = [Task(1, 1_000_000, 0.0, 1_000_000), Task(2, 1_000_000, 0.0, 1_000_000)]
    shared = run_stage(tasks, fake_testbed([1, 1, 1], [8, 8, 8], shared=True, rtt_ms=0))
    duplex = run_stage(tasks, fake_testbed([1, 1, 1], [8, 8, 8], shared=False, rtt_ms=0))
    assert shared == pytest.approx(4.0)  # four 1 MB transfers back to back at 1 MB/s
    assert duplex == pytest.approx(3.0)  # the second scatter overlaps the first gather


def test_pull_replay_reproduces_work_stealing() -> None:
    rnd = random.Random(3)
    for _ in range(30):
        n = rnd.randrange(2, 5)
        tb = fake_testbed(
            [1.0] * n, [50.0] * n, shared=rnd.random() < 0.5, auctioneer=rnd.randrange(n)
        )
        hops = [rnd.uniform(0, 0.03) for _ in range(n)]  # loops that pick outputs up late
        tb = replace(
            tb, devices=tuple(replace(d, hop_s=h) for d, h in zip(tb.devices, hops, strict=True))
        )
        speed = [rnd.uniform(0.2, 2.0) for _ in range(n)]
        options = [
            [
                Task(d, rnd.randrange(1, 10**5), w * speed[d], rnd.randrange(1, 10**5))
                for d in range(n)
            ]
            for w in [rnd.uniform(0.01, 0.1) for _ in range(rnd.randrange(n, 3 * n))]
        ]
        owner, end = assign_by_pulling(options, tb, list(range(n)))
        assert owner[:n] == list(range(n))  # everyone asks at once, in order
        tasks = [options[k][d] for k, d in enumerate(owner)]
        replay = run_stage(tasks, tb, pull=True)
        assert replay == pytest.approx(end, rel=1e-12)
        events: list[Event] = []
        run_stage(tasks, tb, pull=True, events=events)
        assert len([e for e in events if e.lane == "compute"]) == len(tasks)


def test_workload_and_strip_tables_equal_the_geometry_trace() -> None:
    rnd = random.Random(11)
    for name in ("vgg11_bn", "resnet18"):
        spec = spec_for(name, 64, 48)
        work, table = Workload(spec), StripTable(spec)
        for _ in range(150):
            i = rnd.randrange(spec.n_units)
            j = rnd.randrange(i + 1, spec.n_units + 1)
            _, h, w = spec.shape_at(j)
            a, c = rnd.randrange(h), rnd.randrange(w)
            b, d = rnd.randrange(a + 1, h + 1), rnd.randrange(c + 1, w + 1)
            tr = trace(spec, i, j, Region(Span(a, b), Span(c, d)))
            got = work.work(i, j, (a, b, c, d))
            assert got.need_region == tr.need
            assert got.unit_flops == tuple((u.unit.kind, u.flops) for u in tr.units)
            full = trace(spec, i, j, Region(Span(a, b), Span(0, w)))
            assert table.need_rows(i, j, a, b) == (full.need.rows.start, full.need.rows.stop)
            assert sum(table.flops(i, j, a, b)) == full.flops


def test_mismatched_testbed_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        simulate(
            _plan([single_stage(SPEC, 0, SPEC.n_units, 0)], 3), SPEC, fake_testbed([1, 1], [1, 1])
        )


def test_parts_on_the_auctioneer_move_no_bytes() -> None:
    tb = fake_testbed([1, 1], [10, 10])
    _, h, w = SPEC.shape_at(2)
    st = Stage(0, 2, (Part(Region(Span(0, h), Span(0, w)), 0),))
    res = simulate(_plan([st, single_stage(SPEC, 2, SPEC.n_units, 0)], 2), SPEC, tb)
    assert res.bytes_moved == 0


@pytest.mark.parametrize("shared", [True, False])
def test_fast_path_for_one_task_per_device_equals_the_event_queue(shared: bool) -> None:
    rnd = random.Random(5)
    for _ in range(200):
        n = rnd.randrange(1, 6)
        tb = fake_testbed(
            [1.0] * n,
            [rnd.uniform(5, 200) for _ in range(n)],
            shared=shared,
            auctioneer=rnd.randrange(n),
            rtt_ms=rnd.uniform(0, 5),
        )
        # Loops that pick outputs up late (or not at all) reorder the gathers.
        hops = [rnd.choice([0.0, rnd.uniform(0, 0.05)]) for _ in range(n)]
        tb = replace(
            tb, devices=tuple(replace(d, hop_s=h) for d, h in zip(tb.devices, hops, strict=True))
        )
        devs = rnd.sample(range(n), rnd.randrange(1, n + 1))
        tasks = [
            Task(d, rnd.randrange(0, 10**6), rnd.uniform(0, 0.2), rnd.randrange(0, 10**6))
            for d in devs
        ]
        slow = run_stage(tasks, tb, 0.5, events=[])
        assert run_stage(tasks, tb, 0.5) == pytest.approx(slow, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("strategy", ["edgeci", "edgeci-halo", "aofl"])
def test_an_image_requests_first_slabs_cost_a_byte_a_value(strategy: str) -> None:
    """With pixels on the wire (input_itemsize 1) the first stage's remote slabs move a
    quarter of the bytes, and nothing else changes."""
    from edgeci_p2p.planners import plan as plan_with
    from edgeci_p2p.planners.testbeds import load_testbed

    spec = spec_for("vgg16")
    px = replace(spec, input_itemsize=1)
    assert spec.itemsize_at(0) == 4 and px.itemsize_at(0) == 1 and px.itemsize_at(1) == 4
    tb = load_testbed("emulated-4")
    p = plan_with(strategy, spec, tb)
    floats, pixels = simulate(p, spec, tb), simulate(p, px, tb)
    first = p.stages[0]
    work = Workload(spec)
    remote_in = sum(
        3 * (n[1] - n[0]) * (n[3] - n[2])
        for part in first.parts
        if part.device != tb.auctioneer
        for n in [work.work_region(first.start, first.stop, part.region).need]
    )
    assert first.start == 0 and remote_in > 0
    assert floats.bytes_moved - pixels.bytes_moved == 3 * remote_in
    assert pixels.latency <= floats.latency

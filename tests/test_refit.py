"""A plan's strips re-split for moved speeds (``planners/refit.py``): same stages, same
devices, every output row made once, a slower device's strips shorter."""

from __future__ import annotations

from dataclasses import replace

from edgeci_p2p.core.geometry import Region, Span
from edgeci_p2p.core.plan import Part, Plan, Stage
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan as make_plan
from edgeci_p2p.planners.refit import rescaled
from tests.planfakes import check_plan, fake_testbed, moving_plan


def _rows(st: Stage, device: int) -> int:
    return sum(p.region.rows.size for p in st.parts if p.device == device)


def test_a_device_twice_as_slow_gets_about_half_its_rows_and_nothing_else_moves() -> None:
    spec = spec_for("vgg11", 128, 128)
    before = fake_testbed([4.0, 2.0, 2.0], [100, 100, 100], name="before")
    after = fake_testbed([4.0, 2.0, 1.0], [100, 100, 100], name="after")  # d2 halved
    plan = moving_plan(spec, list(before.names))
    got = rescaled(plan, spec, before, after)
    check_plan(replace(got, testbed="before"), spec, before)
    assert [(s.start, s.stop, s.transfer, s.schedule, s.devices) for s in got.stages] == [
        (s.start, s.stop, s.transfer, s.schedule, s.devices) for s in plan.stages
    ]
    assert got.stages[-1] == plan.stages[-1]  # one device: nothing to re-split
    for old, new in zip(plan.stages[:-1], got.stages[:-1], strict=True):
        h = spec.shape_at(old.stop)[1]
        share_old = _rows(old, 2) / h
        assert _rows(new, 2) < _rows(old, 2)
        # d2's weight halves against the others': its share s becomes s / (2 - s).
        assert abs(_rows(new, 2) / h - share_old / (2 - share_old)) <= 4 / h
        assert _rows(new, 0) >= _rows(old, 0) and _rows(new, 1) >= _rows(old, 1)


def test_the_same_speeds_keep_the_strips_and_tiles_are_kept_as_they_are() -> None:
    spec = spec_for("vgg11", 128, 128)
    tb = fake_testbed([4.0, 2.0, 1.0], [100, 100, 100])
    plan = make_plan("edgeci-halo", spec, tb)
    assert rescaled(plan, spec, tb, tb).stages == plan.stages
    # A stage of 2-D tiles is not strips: kept, whatever the speeds.
    _, h, w = spec.shape_at(4)
    quarters = [(0, h, 0, w // 2), (0, h // 2, w // 2, w), (h // 2, h, w // 2, w)]
    tiles = Stage(
        0,
        4,
        tuple(Part(Region(Span(a, b), Span(c, d)), k) for k, (a, b, c, d) in enumerate(quarters)),
    )
    _, hn, wn = spec.shape_at(spec.n_units)
    rest = Stage(4, spec.n_units, (Part(Region(Span(0, hn), Span(0, wn)), 0),))
    tiled = Plan(spec.name, "test", "t", tuple(tb.names), (tiles, rest), auctioneer=0)
    check_plan(tiled, spec, tb)
    slower = fake_testbed([4.0, 2.0, 0.5], [100, 100, 100])
    assert rescaled(tiled, spec, tb, slower).stages[0] == tiles


def test_a_rescaled_plan_of_moved_figures_simulates_faster_than_the_plan_as_it_was() -> None:
    spec = spec_for("vgg11", 128, 128)
    before = fake_testbed([4.0, 2.0, 2.0], [100, 100, 100])
    after = fake_testbed([4.0, 2.0, 1.0], [100, 100, 100])
    plan = make_plan("edgeci-halo", spec, before)
    got = rescaled(plan, spec, before, after)
    check_plan(got, spec, after)
    as_was = simulate(plan, spec, after, record=False).latency
    assert simulate(got, spec, after, record=False).latency < as_was

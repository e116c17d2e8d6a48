"""Plan format: dict round trip, readable form, a validator that catches each broken rule."""

from __future__ import annotations

import json
from dataclasses import replace

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeci_p2p.core.geometry import Region, Span, grid, row_strips, tiles_cover_exactly
from edgeci_p2p.core.plan import (
    Part,
    Plan,
    PlanError,
    Stage,
    covers_exactly,
    same_work,
    single_stage,
    strip_stage,
    validate,
)
from edgeci_p2p.nn.spec import spec_for

SPEC = spec_for("resnet18", 64, 64)
N = SPEC.n_units


def _plan(stages: list[Stage], devices: tuple[str, ...] = ("a", "b", "c")) -> Plan:
    return Plan(SPEC.name, "test", "fake", devices, tuple(stages), auctioneer=0, predicted=1.5)


def good_plan() -> Plan:
    return _plan(
        [
            strip_stage(SPEC, 0, 3, [5, 11], [0, 1, 2]),
            single_stage(SPEC, 3, 5, 1),
            Stage(5, N, tuple(Part(r, k % 3) for k, r in enumerate(grid(2, 2, [1], [1])))),
        ]
    )


def test_good_plan_validates_and_round_trips_through_cbor_and_json() -> None:
    p = good_plan()
    assert SPEC.shape_at(N)[1:] == (2, 2)
    validate(p, SPEC)
    assert Plan.from_dict(cbor2.loads(cbor2.dumps(p.to_dict()))) == p
    assert Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_a_plan_priced_anew_does_the_same_work_and_a_changed_one_does_not() -> None:
    p = good_plan()
    assert same_work(p, p) and not same_work(None, p)
    assert same_work(p, replace(p, predicted=2.5, notes={"decision": "stale"}))
    # Equal stages in a new tuple are not taken on trust (only a repricing keeps them).
    assert not same_work(p, replace(p, stages=(*p.stages[:-1], p.stages[-1])))
    assert not same_work(p, replace(p, devices=("a", "c", "b")))
    assert not same_work(p, replace(p, auctioneer=1))
    assert not same_work(p, replace(p, head_device=2))


def test_readable_form_names_every_stage_device_and_the_head() -> None:
    text = str(good_plan())
    assert "3 stage(s)" in text and "predicted 1500.0 ms" in text
    assert "0:5@a 5:11@b" in text  # row strips show rows only
    assert "0:1x0:1@a" in text  # tiles show both axes
    assert text.rstrip().endswith("head @ a")


@pytest.mark.parametrize(
    "stages, message",
    [
        ([single_stage(SPEC, 0, 3, 0)], "model has"),  # stops early
        ([single_stage(SPEC, 0, 3, 0), single_stage(SPEC, 4, N, 0)], "expected 3"),  # gap
        ([single_stage(SPEC, 0, 3, 0), single_stage(SPEC, 2, N, 0)], "expected 3"),  # overlap
        ([single_stage(SPEC, 0, N, 7)], "unknown device"),
        ([Stage(0, N, ())], "no parts"),
        (
            [Stage(0, 3, (Part(Region(Span(0, 4), Span(0, 16)), 0),)), single_stage(SPEC, 3, N, 0)],
            "exactly once",
        ),  # misses rows
    ],
)
def test_validator_rejects_broken_plans(stages: list[Stage], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        validate(_plan(stages), SPEC)


def test_validator_rejects_doubly_produced_rows_and_foreign_models() -> None:
    _, h, w = SPEC.shape_at(3)
    twice = Stage(
        0,
        3,
        (
            *tuple(Part(r, 0) for r in row_strips(h, w, [8])),
            Part(Region(Span(4, 6), Span(0, w)), 1),
        ),
    )
    with pytest.raises(PlanError, match="exactly once"):
        validate(_plan([twice, single_stage(SPEC, 3, N, 0)]), SPEC)
    with pytest.raises(PlanError, match="model"):
        validate(replace(good_plan(), model="vgg16"), SPEC)


def test_unknown_transfer_mode_is_refused_when_read() -> None:
    d = good_plan().to_dict()
    d["stages"][0]["transfer"] = "teleport"
    with pytest.raises(PlanError, match="teleport"):
        Plan.from_dict(d)


@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.lists(
        st.tuples(st.integers(0, 11), st.integers(1, 12), st.integers(0, 11), st.integers(1, 12)),
        max_size=6,
    ),
)
def test_fast_cover_check_agrees_with_the_cell_by_cell_one(
    h: int, w: int, boxes: list[tuple[int, int, int, int]]
) -> None:
    regions = [Region(Span(r0, max(r0, r1)), Span(c0, max(c0, c1))) for r0, r1, c0, c1 in boxes]
    regions = [r for r in regions if r.area > 0]
    assert covers_exactly(regions, h, w) == (bool(regions) and tiles_cover_exactly(regions, h, w))


@given(st.integers(1, 9), st.integers(1, 9), st.data())
def test_any_grid_covers_exactly(h: int, w: int, data: st.DataObject) -> None:
    rc = sorted(data.draw(st.sets(st.integers(1, h - 1), max_size=3))) if h > 1 else []
    cc = sorted(data.draw(st.sets(st.integers(1, w - 1), max_size=3))) if w > 1 else []
    assert covers_exactly(grid(h, w, rc, cc), h, w)

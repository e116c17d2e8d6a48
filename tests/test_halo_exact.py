"""Strip-resident execution is exact: running a halo plan part by part, each part's input
slab assembled only from rows its own device holds and rows received through
``row_moves``, gives the unsplit model's map and logits."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import pytest
import torch
from torch import Tensor

from edgeci_p2p.core.geometry import Region, Span, full_region, trace
from edgeci_p2p.core.plan import Plan, Stage, row_moves, strip_stage, validate
from edgeci_p2p.nn.executor import FusedExecutor, crop, stitch
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import load_model
from edgeci_p2p.planners import plan
from edgeci_p2p.planners.testbeds import load_testbed


@cache
def _executor(name: str, h: int, w: int) -> FusedExecutor:
    lm = load_model(name, use_hub_cache=False)
    return FusedExecutor(lm.module, describe(lm.module, name, h, w, lm.fingerprint))


def _slab_from_peers(
    ex: FusedExecutor, prev: Stage, st: Stage, held: dict[int, tuple[Region, Tensor]], q: int
) -> tuple[Tensor, Region]:
    """Part ``q``'s input slab built only from its device's own strip and its row moves."""
    part = st.parts[q]
    need = trace(ex.spec, st.start, st.stop, part.region).need
    pieces: list[tuple[Span, Tensor]] = []
    own = held.get(part.device)
    if own is not None:
        region, x = own
        lo, hi = max(need.rows.start, region.rows.start), min(need.rows.stop, region.rows.stop)
        if hi > lo:
            want = Region(Span(lo, hi), region.cols)
            pieces.append((want.rows, crop(x, region, want)))
    for m in row_moves(ex.spec, prev, st):
        if m.dst == part.device:
            region, x = held[m.src]  # only what the sender holds can be sent
            pieces.append((m.rows, crop(x, region, Region(m.rows, region.cols))))
    pieces.sort(key=lambda p: p[0].start)
    rows = [r for span, _ in pieces for r in range(span.start, span.stop)]
    assert rows == list(range(need.rows.start, need.rows.stop)), (part, need)
    return torch.cat([x for _, x in pieces], dim=2), need


def run_plan(ex: FusedExecutor, p: Plan, image: Tensor) -> Tensor:
    """The logits of ``p`` on ``image``, moving only what the plan says moves."""
    spec = ex.spec
    whole: Tensor | None = image
    held: dict[int, tuple[Region, Tensor]] = {}
    prev: Stage | None = None
    for st in p.stages:
        outs: dict[int, tuple[Region, Tensor]] = {}
        for q, part in enumerate(st.parts):
            tr = trace(spec, st.start, st.stop, part.region)
            if whole is not None:  # after a gather (or at the input): slabs from the auctioneer
                _, h, w = spec.shape_at(st.start)
                slab, region = crop(whole, full_region(h, w), tr.need), tr.need
            else:
                assert prev is not None
                slab, region = _slab_from_peers(ex, prev, st, held, q)
            outs[part.device] = (part.region, ex.run_trace(tr, slab, region))
        if st.transfer == "gather":
            _, h, w = spec.shape_at(st.stop)
            whole = stitch([x for _, x in outs.values()], [r for r, _ in outs.values()], h, w)
            held = {}
        else:
            whole, held = None, outs
        prev = st
    assert whole is not None
    return ex.head(whole)


def _check(ex: FusedExecutor, p: Plan, seed: int) -> None:
    validate(p, ex.spec)
    _, h, w = ex.spec.input_shape
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    want = ex.head(ex.reference(x))
    torch.testing.assert_close(run_plan(ex, p, x), want, rtol=1e-4, atol=1e-4)


def test_strips_that_move_between_stages_are_exact() -> None:
    ex = _executor("vgg11", 32, 32)
    spec = ex.spec

    def strips(a: int, b: int, cuts: list[int], devs: list[int], halo: bool = True) -> Stage:
        st = strip_stage(spec, a, b, cuts, devs)
        return replace(st, transfer="halo") if halo else st

    stages = (
        strips(0, 1, [5, 20], [0, 1, 2]),  # 32 rows
        strips(1, 3, [3, 10], [2, 0, 1]),  # 16 rows: other boundaries, other order
        strips(3, 5, [3], [1, 2]),  # 8 rows, one device fewer
        strips(5, 8, [1, 3], [0, 2, 1], halo=False),  # 4 rows, gathered
        strips(8, spec.n_units, [], [0], halo=False),
    )
    p = Plan(spec.name, "t", "fake", ("a", "b", "c"), stages)
    _check(ex, p, 1)


@pytest.mark.parametrize(
    "model, size, testbed",
    [("vgg16", 96, "emulated-4"), ("vgg16", 64, "pi4-wifi-4"), ("resnet34", 96, "homog-4")],
)
def test_edgeci_halo_plans_are_exact(model: str, size: int, testbed: str) -> None:
    ex = _executor(model, size, size)
    p = plan("edgeci-halo", ex.spec, load_testbed(testbed))
    assert any(st.transfer == "halo" for st in p.stages), str(p)
    _check(ex, p, size)

"""Units from the traced graph (issue 23): VGG/ResNet as before, six more families exact."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor, nn
from torchvision.models import VGG

from edgeci_p2p.core.geometry import (
    Region,
    Span,
    full_region,
    grid,
    row_strips,
    tiles_cover_exactly,
    total_flops,
    trace,
)
from edgeci_p2p.core.plan import Part, PlanError, Stage, single_stage, validate
from edgeci_p2p.core.sim import scale_seconds, simulate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import StripTable, Workload
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.extract import UnsupportedModelError, describe, describe_by_class
from edgeci_p2p.nn.images import sample_image_path
from edgeci_p2p.nn.models import load_model, meta_model, published_gmacs
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.wire.messages import TileRequest
from tests.daemons import client, cluster, reference
from tests.planfakes import check_plan

NEW = (
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "convnext_tiny",
)
SIZE = {
    "resnet50": (64, 64),
    "mobilenet_v2": (96, 80),
    "mobilenet_v3_large": (96, 80),
    "efficientnet_b0": (64, 64),
    "regnet_y_400mf": (96, 80),
    "convnext_tiny": (64, 64),
}
"""One small size per model (square and not), so the module builds each map once."""


@pytest.mark.parametrize("name", ["vgg11", "vgg16", "vgg16_bn", "resnet18", "resnet34"])
def test_graph_units_equal_the_class_based_ones(name: str) -> None:
    model = meta_model(name)
    for h, w in ((224, 224), (97, 131)):
        assert describe(model, name, h, w) == describe_by_class(model, name, h, w)


@pytest.mark.parametrize("name", NEW)
def test_flops_match_torchvision_published_figures(name: str) -> None:
    gmacs = total_flops(spec_for(name, 224, 224)) / 2e9
    assert abs(gmacs - published_gmacs(name)) / published_gmacs(name) < 0.04


def test_families_come_out_with_their_kinds_of_units() -> None:
    kinds = {n: {u.kind for u in spec_for(n, 224, 224).units} for n in NEW}
    assert kinds["resnet50"] == {"conv", "pool", "block"}
    assert "dw" in kinds["mobilenet_v2"] and "dw" in kinds["convnext_tiny"]
    # Squeeze-and-excitation: a synchronisation point, the unit after it starts with
    # the multiply by a scale vector made from the whole map at its input.
    specs = {n: spec_for(n, 224, 224) for n in NEW}
    scaled = {n: sum(u.needs_scale for u in s.units) for n, s in specs.items()}
    assert scaled == {
        "resnet50": 0,
        "mobilenet_v2": 0,
        "mobilenet_v3_large": 8,
        "efficientnet_b0": 16,
        "regnet_y_400mf": 16,
        "convnext_tiny": 0,
    }
    assert not any(u.is_global for s in specs.values() for u in s.units)
    spec = spec_for("efficientnet_b0", 96, 80)
    u = next(u for u in spec.units if u.needs_scale and u.is_block)
    one = Region(Span(0, 1), Span(0, 1))
    # First in its range: the vector comes with the work, the tile reads its own pixel.
    assert trace(spec, u.index, u.index + 1, one).need == one
    # Deeper in a range: the tile reads the whole map at the unit's input to make it.
    assert trace(spec, u.index - 1, u.index + 1, one).units[1].need == Region(
        Span(0, u.in_shape[1]), Span(0, u.in_shape[2])
    )


class _Upsampler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.up(self.conv(x))), 1))  # type: ignore[no-any-return]


def test_an_op_that_cannot_be_tiled_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedModelError, match="up: layer Upsample"):
        describe(_Upsampler(), "up", 32, 32)
    with torch.device("meta"):
        avg = VGG(nn.Sequential(nn.Conv2d(3, 512, 3), nn.AvgPool2d(2)), num_classes=3)
    with pytest.raises(UnsupportedModelError, match=r"features\.1: layer AvgPool2d"):
        describe(avg, "avg", 32, 32)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"])
def test_workload_and_strip_tables_equal_the_geometry_trace(name: str) -> None:
    rnd = random.Random(23)
    spec = spec_for(name, 64, 48)
    work, table = Workload(spec), StripTable(spec)
    for _ in range(60):
        i = rnd.randrange(spec.n_units)
        j = rnd.randrange(i + 1, min(spec.n_units, i + 6) + 1)
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


# ---- exactness: stitched tiles == the unsplit model's map -----------------------------------


@pytest.fixture(scope="module")
def executors() -> Iterator[dict[str, tuple[FusedExecutor, list[Tensor]]]]:
    """Each model built once, with its unsplit map at every boundary."""
    out = {}
    with torch.no_grad():
        for name in NEW:
            lm = load_model(name, use_hub_cache=False)
            h, w = SIZE[name]
            ex = FusedExecutor(lm.module, describe(lm.module, name, h, w, lm.fingerprint))
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h + w))
            out[name] = (ex, ex.activations(x))
    yield out


def _cuts(data: st.DataObject, size: int, most: int) -> list[int]:
    n = data.draw(st.integers(1, min(most, size)))
    if n == 1:
        return []
    return sorted(data.draw(st.sets(st.integers(1, size - 1), min_size=n - 1, max_size=n - 1)))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_tiled_equals_unsplit_for_every_family(
    executors: dict[str, tuple[FusedExecutor, list[Tensor]]],
    data: st.DataObject,
) -> None:
    ex, maps = executors[data.draw(st.sampled_from(NEW))]
    n = ex.spec.n_units
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, min(n, start + 8)))
    _, oh, ow = ex.spec.shape_at(stop)
    if data.draw(st.booleans()):
        regions = row_strips(oh, ow, _cuts(data, oh, 6))
    else:
        regions = grid(oh, ow, _cuts(data, oh, 3), _cuts(data, ow, 3))
    assert tiles_cover_exactly(regions, oh, ow)
    with torch.no_grad():
        got = ex.run_tiled(start, stop, regions, maps[start])
    scale = float(maps[stop].abs().max()) or 1.0
    torch.testing.assert_close(got / scale, maps[stop] / scale)


def test_whole_network_and_head_equal_the_model(
    executors: dict[str, tuple[FusedExecutor, list[Tensor]]],
) -> None:
    for name in NEW:
        ex, maps = executors[name]
        _, h, w = ex.spec.shape_at(ex.spec.n_units)
        with torch.no_grad():
            feats = ex.run_tiled(0, ex.spec.n_units, row_strips(h, w, [1]), maps[0])
            want = ex.model(maps[0])
        scale = float(want.abs().max())
        torch.testing.assert_close(ex.head(feats) / scale, want / scale)


def test_a_synchronisation_point_takes_its_scale_vector_from_the_whole_map(
    executors: dict[str, tuple[FusedExecutor, list[Tensor]]],
) -> None:
    for name in ("mobilenet_v3_large", "efficientnet_b0"):
        ex, maps = executors[name]
        spec = ex.spec
        u = next(u for u in spec.units if u.needs_scale and u.is_block)
        b = u.index
        _, h, w = spec.shape_at(b + 1)
        top = Region(Span(0, h // 2), Span(0, w))
        tr = trace(spec, b, b + 1, top)
        slab = maps[b][:, :, tr.need.rows.start : tr.need.rows.stop]
        with pytest.raises(ValueError, match="needs its scale vector"):
            ex.run_trace(tr, slab, tr.need)
        scales = ex.scales(b, maps[b])
        joined = ex.join_scales(b, scales)
        assert joined is not None and joined.shape == (1, u.in_shape[0] - u.out_shape[0], 1, 1)
        assert ex.split_scales(b, joined).keys() == scales.keys()
        with pytest.raises(ValueError, match="scale of shape"):
            ex.split_scales(b, joined[:, 1:])
        got = ex.run_trace(tr, slab, tr.need, ex.split_scales(b, joined))
        scale = float(maps[b + 1].abs().max())
        torch.testing.assert_close(got / scale, maps[b + 1][:, :, : h // 2] / scale)
        # The cut carries cat(SE input, shortcut output): the unsplit graph's own maps.
        assert ex.graph.channels[b] == (u.in_shape[0] - u.out_shape[0], u.out_shape[0])


def test_planners_gather_at_synchronisation_points_and_count_the_scale() -> None:
    spec = spec_for("efficientnet_b0", 96, 80)
    tb = load_testbed("homog-4")
    ctx = Context(spec, tb)
    sync = [u.index for u in spec.units if u.needs_scale]
    b = sync[0]
    pre = scale_seconds(spec, tb, b)
    assert pre > 0 and scale_seconds(spec, tb, b - 1) == 0
    whole = ctx.compute_seconds(tb.auctioneer, b, b + 1, 0, spec.shape_at(b + 1)[1])
    assert ctx.single_cost(tb.auctioneer, b, b + 1) == pytest.approx(pre + whole)
    # Each remote slab carries the vectors (float32).
    t = ctx.strip_task(1, b, b + 1, 0, 2)
    lo, hi = ctx.table.need_rows(b, b + 1, 0, 2)
    c, _, w = spec.shape_at(b)
    vec = sum(op.in_channels for op in spec.units[b].ops if op.kind == "sescale")
    assert vec == c and t.in_bytes == 4 * c * w * (hi - lo) + 4 * vec
    for strategy in ("edgeci-halo", "modnn"):  # edgeci-halo runs edgeci's DP too
        p = plan(strategy, spec, tb, ctx)
        check_plan(p, spec, tb)
        for k, stage in enumerate(p.stages):
            halo = stage.transfer == "halo" or (k > 0 and p.stages[k - 1].transfer == "halo")
            assert not (spec.units[stage.start].needs_scale and halo)
        res = simulate(p, spec, tb, ctx.work)
        starts = [s.start for s in p.stages if spec.units[s.start].needs_scale]
        scaled = [e for e in res.events if e.label == "scale"]
        assert len(scaled) == len(starts)
        assert all(e.device == tb.auctioneer for e in scaled)
    # A halo boundary at a synchronisation point is not a plan.
    _, h, w = spec.shape_at(b)
    halves = (Region(Span(0, h // 2), Span(0, w)), Region(Span(h // 2, h), Span(0, w)))
    halo = Stage(b - 1, b, (Part(halves[0], 0), Part(halves[1], 1)), "halo")
    after = Stage(b, spec.n_units, (Part(full_region(*spec.shape_at(spec.n_units)[1:]), 0),))
    bad = dataclasses.replace(p, stages=(single_stage(spec, 0, b - 1, 0), halo, after))
    with pytest.raises(PlanError, match="squeeze-and-excitation scale"):
        validate(bad, spec)


# ---- planning ----------------------------------------------------------------------------


def test_our_planners_emit_valid_plans_and_predict_what_the_simulator_says() -> None:
    # Every planner on every model and testbed: `edgeci bench sim` (docs/models.md).
    spec: ModelSpec = spec_for("mobilenet_v3_large", 96, 80)
    tb = load_testbed("pi4-wifi-4")
    ctx = Context(spec, tb)
    for strategy in ("edgeci", "edgeci-halo"):
        p = plan(strategy, spec, tb, ctx)
        check_plan(p, spec, tb)
        res = simulate(p, spec, tb, ctx.work, record=False)
        assert p.predicted == pytest.approx(res.latency, rel=1e-9)


# ---- served by a cluster -------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.one_loop
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large"])
async def test_a_three_peer_cluster_serves_mobilenets_exactly(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = Image.open(sample_image_path()).convert("RGB").resize((112, 80))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    image = buf.getvalue()
    ref = reference(name, image, "native")
    sent: list[int] = []  # MobileNetV3's scale vectors, made by the auctioneer and sent
    real = TileRequest.check

    def check(self: TileRequest) -> None:
        real(self)
        if self.scale is not None:
            sent.append(self.start)

    monkeypatch.setattr(TileRequest, "check", check)
    async with cluster(3, models=[name]) as peers, client(peers[1]) as c:
        # modnn: every stage split over every peer, so the tiles really travel.
        r = await asyncio.wait_for(c.infer(image, model=name, strategy="modnn", size="native"), 60)
        got = torch.from_numpy(np.array(r.logits, dtype=np.float32)).reshape(ref.shape)
        scale = float(ref.abs().max())
        torch.testing.assert_close(got / scale, ref / scale)
        assert r.strategy == "modnn" and len(r.plan["nodes"]) == 3
    spec = spec_for(name, 80, 112)
    assert {spec.units[b].needs_scale for b in sent} <= {True}
    assert len(set(sent)) == sum(u.needs_scale for u in spec.units)

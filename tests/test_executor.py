"""The fused executor: stitched tiles equal the unsplit model, for any cut."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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
from edgeci_p2p.nn.executor import FusedExecutor, split, stitch
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import load_model, published_gmacs
from edgeci_p2p.nn.spec import spec_for

SIZES = [(224, 224), (193, 257), (97, 131)]


@cache
def _executor(name: str, h: int, w: int) -> FusedExecutor:
    lm = _loaded(name)
    return FusedExecutor(lm.module, describe(lm.module, name, h, w, lm.fingerprint))


@cache
def _loaded(name: str):  # type: ignore[no-untyped-def]
    return load_model(name, use_hub_cache=False)


@cache
def _activations(name: str, h: int, w: int) -> list[Tensor]:
    """The unsplit model's map at every boundary, through the model's own modules."""
    ex = _executor(name, h, w)
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))
    maps = [x]
    for i in range(ex.spec.n_units):
        maps.append(ex.reference(maps[-1], i, i + 1))
    return maps


def _cuts(draw: Callable[..., int], size: int, max_parts: int, data: st.DataObject) -> list[int]:
    n = data.draw(st.integers(1, min(max_parts, size)))
    return (
        sorted(data.draw(st.sets(st.integers(1, size - 1), min_size=n - 1, max_size=n - 1)))
        if n > 1
        else []
    )


@pytest.mark.parametrize("name", ["vgg16", "resnet34"])
@settings(max_examples=12)
@given(data=st.data())
def test_tiled_equals_unsplit(name: str, data: st.DataObject) -> None:
    h, w = data.draw(st.sampled_from(SIZES))
    ex = _executor(name, h, w)
    maps = _activations(name, h, w)
    n = ex.spec.n_units
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, min(n, start + data.draw(st.integers(1, n)))))
    _, oh, ow = ex.spec.shape_at(stop)
    if data.draw(st.booleans()):
        regions = row_strips(oh, ow, _cuts(data.draw, oh, 8, data))
    else:
        regions = grid(oh, ow, _cuts(data.draw, oh, 4, data), _cuts(data.draw, ow, 4, data))
    assert tiles_cover_exactly(regions, oh, ow)
    got = ex.run_tiled(start, stop, regions, maps[start])
    torch.testing.assert_close(got, maps[stop])


def test_whole_network_and_head_equal_the_model() -> None:
    ex = _executor("resnet34", 193, 257)
    x = _activations("resnet34", 193, 257)[0]
    _, h, w = ex.spec.shape_at(ex.spec.n_units)
    feats = ex.run_tiled(0, ex.spec.n_units, row_strips(h, w, [1, 3, 5]), x)
    torch.testing.assert_close(ex.head(feats), ex.model(x))


@pytest.mark.parametrize(
    ("name", "start", "stop"),
    [
        ("resnet34", 0, 1),  # 7x7/2/3 stem
        ("resnet34", 1, 2),  # 3x3/2/1 max-pool
        ("resnet34", 5, 6),  # stride-2 BasicBlock with 1x1 downsample
        ("resnet34", 0, 6),  # all of the above fused
        ("vgg16", 2, 3),  # 2x2/2 pool
    ],
)
def test_one_row_strips_and_border_strips(name: str, start: int, stop: int) -> None:
    h, w = 97, 131
    ex = _executor(name, h, w)
    maps = _activations(name, h, w)
    _, oh, ow = ex.spec.shape_at(stop)
    one_row = row_strips(oh, ow, list(range(1, oh)))
    torch.testing.assert_close(ex.run_tiled(start, stop, one_row, maps[start]), maps[stop])
    for r in (Span(0, 1), Span(oh - 1, oh), Span(0, oh)):
        region = Region(r, Span(0, ow))
        tr = trace(ex.spec, start, stop, region)
        whole = full_region(*maps[start].shape[2:])
        slab = split(maps[start], [tr.need])[0]
        got = ex.run_trace(tr, slab, tr.need)
        want = split(maps[stop], [region])[0]
        torch.testing.assert_close(got, want)
        assert whole.contains(tr.need)


def _tiny_vgg(features: list[nn.Module]) -> VGG:
    return VGG(nn.Sequential(*features), num_classes=10).eval()


def test_ceil_mode_pool_and_odd_windows() -> None:
    torch.manual_seed(0)
    model = _tiny_vgg(
        [
            nn.Conv2d(3, 8, 5, 2, 2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            nn.Conv2d(8, 8, 3, 1, 2, dilation=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(8, 512, 3, 1, 1),
            nn.ReLU(),
        ]
    )
    for h, w in [(45, 37), (50, 61)]:
        spec = describe(model, "tiny", h, w)
        ex = FusedExecutor(model, spec)
        x = torch.randn(1, 3, h, w)
        want = ex.reference(x)
        _, oh, ow = spec.shape_at(spec.n_units)
        assert (oh, ow) == tuple(model.features(x).shape[2:])
        for regions in (row_strips(oh, ow, [1, oh - 1]), grid(oh, ow, [oh // 2], [1])):
            torch.testing.assert_close(ex.run_tiled(0, spec.n_units, regions, x), want)


def test_split_and_stitch_are_inverses() -> None:
    x = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).reshape(2, 3, 7, 9)
    regions = grid(7, 9, [2, 3], [4])
    assert torch.equal(stitch(split(x, regions), regions, 7, 9), x)
    with pytest.raises(ValueError):
        stitch(split(x, regions)[:-1], regions[:-1] + regions[:1], 7, 9)


def test_slab_that_misses_the_halo_is_refused() -> None:
    ex = _executor("resnet34", 97, 131)
    x = _activations("resnet34", 97, 131)[0]
    out = Region(Span(5, 9), Span(0, 49))
    tr = trace(ex.spec, 0, 1, out)
    short = Region(Span(tr.need.rows.start + 1, tr.need.rows.stop), tr.need.cols)
    with pytest.raises(ValueError, match="does not hold"):
        ex.run_trace(tr, split(x, [short])[0], short)


@pytest.mark.parametrize("name", ["vgg16", "resnet34"])
def test_flops_match_torchvision_published_figures(name: str) -> None:
    gmacs = total_flops(spec_for(name, 224, 224)) / 2e9
    assert abs(gmacs - published_gmacs(name)) / published_gmacs(name) < 0.02


@pytest.mark.parametrize(
    "name", ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16_bn", "vgg19", "vgg19_bn", "resnet18"]
)
def test_other_variants_describe_consistently(name: str) -> None:
    spec = spec_for(name, 224, 224)
    gmacs = total_flops(spec) / 2e9
    assert abs(gmacs - published_gmacs(name)) / published_gmacs(name) < 0.02
    assert spec.units[-1].out_shape[0] == 512


def test_seeded_weights_are_reproducible_and_fingerprinted() -> None:
    a = load_model("resnet18", use_hub_cache=False)
    b = load_model("resnet18", use_hub_cache=False)
    c = load_model("resnet18", use_hub_cache=False, seed=7)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not a.pretrained


def test_weights_file_is_loaded_with_weights_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = load_model("resnet18", use_hub_cache=False, seed=3)
    path = tmp_path / "r18.pth"
    torch.save(a.module.state_dict(), path)
    b = load_model("resnet18", path)
    assert b.fingerprint == a.fingerprint and b.pretrained
    with pytest.raises(ValueError, match="does not fit"):
        load_model("resnet34", path)

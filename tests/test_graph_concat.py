"""Branches concatenated along channels (issue 23): GoogLeNet-style units, exact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torchvision.models import googlenet

from edgeci_p2p.core.geometry import Region, Span, grid, row_strips, tiles_cover_exactly, trace
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import StripTable, Workload
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.extract import UnsupportedModelError, describe


def _cbr(cin: int, cout: int, k: int, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class _Branches(nn.Module):
    """Three branches of different windows (one a pool then a 1x1 conv), concatenated."""

    def __init__(self, cin: int, stride: int) -> None:
        super().__init__()
        self.a = _cbr(cin, 4, 1, stride)
        self.b = nn.Sequential(_cbr(cin, 3, 1), _cbr(3, 5, 3, stride))
        self.c = nn.Sequential(nn.MaxPool2d(3, stride, 1, ceil_mode=True), _cbr(cin, 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.a(x), self.b(x), self.c(x)], 1)


class _Dense(nn.Module):
    """A DenseNet layer: the input itself, then what it grew, along channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.grow = nn.Sequential(nn.Conv2d(cin, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((x, self.grow(x)), dim=1)


class _CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 6, 3, 2)
        self.mix1 = _Branches(6, 1)
        self.dense = _Dense(11)
        self.mix2 = _Branches(14, 2)
        self.conv = _cbr(11, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.mix2(self.dense(self.mix1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(y), 1))  # type: ignore[no-any-return]


def _executor(model: nn.Module, name: str, h: int, w: int) -> tuple[FusedExecutor, list[Tensor]]:
    model.eval()
    with torch.no_grad():
        for m in model.modules():  # BN statistics that do something
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ex = FusedExecutor(model, describe(model, name, h, w))
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    return ex, ex.activations(x)


@pytest.fixture(scope="module")
def nets() -> Iterator[dict[str, tuple[FusedExecutor, list[Tensor]]]]:
    torch.manual_seed(23)
    yield {
        "catnet": _executor(_CatNet(), "catnet", 29, 22),
        "googlenet": _executor(
            googlenet(weights=None, aux_logits=False, init_weights=False), "googlenet", 64, 48
        ),
    }


def test_concatenations_come_out_as_cat_blocks(
    nets: dict[str, tuple[FusedExecutor, list[Tensor]]],
) -> None:
    spec = nets["catnet"][0].spec
    cats = [u for u in spec.units if u.merge == "cat"]
    assert [(u.name, len(u.branches)) for u in cats] == [
        ("mix1", 3),
        ("dense.grow", 2),
        ("mix2", 3),
    ]
    assert cats[1].main == () and cats[1].out_shape[0] == 14  # the identity branch first
    assert cats[2].out_shape == (11, 8, 6)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    g = nets["googlenet"][0].spec
    assert sum(u.merge == "cat" and len(u.branches) == 4 for u in g.units) == 9
    for s in (spec, g):  # the planners' fast tables agree with the traces
        work, table = Workload(s), StripTable(s)
        for i in range(s.n_units):
            _, h, w = s.shape_at(i + 1)
            tr = trace(s, i, s.n_units, Region(Span(0, 1), Span(0, 1)))
            assert work.work(i, s.n_units, (0, 1, 0, 1)).need_region == tr.need
            full = trace(s, i, i + 1, Region(Span(h // 2, h), Span(0, w)))
            assert table.need_rows(i, i + 1, h // 2, h) == (
                full.need.rows.start,
                full.need.rows.stop,
            )
            assert sum(table.flops(i, i + 1, h // 2, h)) == full.flops


def _cuts(data: st.DataObject, size: int, most: int) -> list[int]:
    n = data.draw(st.integers(1, min(most, size)))
    if n == 1:
        return []
    return sorted(data.draw(st.sets(st.integers(1, size - 1), min_size=n - 1, max_size=n - 1)))


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_tiled_concatenations_equal_the_unsplit_model(
    nets: dict[str, tuple[FusedExecutor, list[Tensor]]], data: st.DataObject
) -> None:
    ex, maps = nets[data.draw(st.sampled_from(sorted(nets)))]
    n = ex.spec.n_units
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, min(n, start + 6)))
    _, oh, ow = ex.spec.shape_at(stop)
    if data.draw(st.booleans()):
        regions = row_strips(oh, ow, _cuts(data, oh, 5))
    else:
        regions = grid(oh, ow, _cuts(data, oh, 3), _cuts(data, ow, 3))
    assert tiles_cover_exactly(regions, oh, ow)
    with torch.no_grad():
        got = ex.run_tiled(start, stop, regions, maps[start])
    scale = float(maps[stop].abs().max()) or 1.0
    torch.testing.assert_close(got / scale, maps[stop] / scale)


def test_whole_catnet_and_head_equal_the_model(
    nets: dict[str, tuple[FusedExecutor, list[Tensor]]],
) -> None:
    ex, maps = nets["catnet"]
    _, h, w = ex.spec.shape_at(ex.spec.n_units)
    with torch.no_grad():
        feats = ex.run_tiled(0, ex.spec.n_units, grid(h, w, [3], [2, 4]), maps[0])
        want = ex.model(maps[0])
    torch.testing.assert_close(ex.head(feats), want)


class _CatRows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.a(x), self.b(x)], 2)
        return self.fc(torch.flatten(self.pool(y), 1))  # type: ignore[no-any-return]


class _CatSizes(_CatRows):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        return self.fc(torch.flatten(self.pool(y), 1))  # type: ignore[no-any-return]


def test_a_concatenation_that_is_not_a_channel_join_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedModelError, match=r"node cat: concatenation along dim 2"):
        describe(_CatRows(), "rows", 16, 16)
    with pytest.raises(
        UnsupportedModelError, match=r"node cat: .*other sizes \[\(16, 16\), \(8, 8\)\]"
    ):
        describe(_CatSizes(), "sizes", 16, 16)

"""Pure geometry: receptive fields, border padding, partitions (no torch)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeci_p2p.core.geometry import (
    Region,
    Span,
    grid,
    needed_span,
    proportional_strips,
    row_strips,
    strips,
    tiles_cover_exactly,
    window_out_size,
)


def test_stem_conv_7x7_s2_p3_at_each_border() -> None:
    # ResNet stem on 224 rows -> 112 rows.
    assert window_out_size(224, 7, 2, 3) == 112
    # First output row: reads rows -3..3, so 3 rows of zero padding on top.
    assert needed_span(Span(0, 1), 224, 7, 2, 3) == (Span(0, 4), 3, 0)
    # Last output row 111: reads 219..225 -> clamp to 223, 2 rows of padding below.
    assert needed_span(Span(111, 112), 224, 7, 2, 3) == (Span(219, 224), 0, 2)
    # An interior strip gets real neighbouring rows, never padding.
    assert needed_span(Span(10, 20), 224, 7, 2, 3) == (Span(17, 42), 0, 0)


def test_maxpool_3x3_s2_p1_is_not_the_k_equals_s_rule() -> None:
    # DeepThings' rule [o*s, o*s+s-1] would say rows 20..23 for outputs 10..11.
    assert window_out_size(112, 3, 2, 1) == 56
    assert needed_span(Span(10, 12), 112, 3, 2, 1) == (Span(19, 24), 0, 0)
    assert needed_span(Span(0, 1), 112, 3, 2, 1) == (Span(0, 2), 1, 0)
    assert needed_span(Span(55, 56), 112, 3, 2, 1) == (Span(109, 112), 0, 0)


def test_ceil_mode_pool_extra_row_is_padded() -> None:
    # 2x2/2 ceil pool over 7 rows gives 4 rows; the last reads row 6 plus one pad row.
    assert window_out_size(7, 2, 2, 0, ceil_mode=True) == 4
    assert window_out_size(7, 2, 2, 0, ceil_mode=False) == 3
    assert needed_span(Span(3, 4), 7, 2, 2, 0) == (Span(6, 7), 0, 1)
    # PyTorch drops a window that would start in the right padding.
    assert window_out_size(5, 3, 2, 1, ceil_mode=True) == 3


def test_one_row_strips() -> None:
    for o in range(56):
        span, top, bottom = needed_span(Span(o, o + 1), 56, 3, 1, 1)
        assert span.size + top + bottom == 3


@given(
    size=st.integers(8, 300),
    k=st.integers(1, 7),
    s=st.integers(1, 3),
    data=st.data(),
)
def test_needed_span_plus_padding_has_exactly_the_window_rows(
    size: int, k: int, s: int, data: st.DataObject
) -> None:
    p = data.draw(st.integers(0, k // 2))
    out = window_out_size(size, k, s, p)
    o0 = data.draw(st.integers(0, out - 1))
    o1 = data.draw(st.integers(o0 + 1, out))
    span, top, bottom = needed_span(Span(o0, o1), size, k, s, p)
    assert span.start >= 0 and span.stop <= size
    assert span.size + top + bottom == (o1 - o0 - 1) * s + k
    # Padding only at real borders.
    assert top == 0 or span.start == 0
    assert bottom == 0 or span.stop == size


def test_partitions_cover_exactly_once() -> None:
    assert tiles_cover_exactly(row_strips(7, 5, [1, 2, 6]), 7, 5)
    assert tiles_cover_exactly(grid(9, 11, [3, 4], [1, 10]), 9, 11)
    overlapping = [Region(Span(0, 4), Span(0, 5)), Region(Span(3, 7), Span(0, 5))]
    assert not tiles_cover_exactly(overlapping, 7, 5)
    assert not tiles_cover_exactly(row_strips(7, 5, [3])[:1], 7, 5)
    with pytest.raises(ValueError):
        strips(5, [3, 3])


@given(
    size=st.integers(1, 500),
    weights=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8).filter(lambda w: sum(w) > 0.01),
)
def test_proportional_strips_tile_the_axis(size: int, weights: list[float]) -> None:
    spans = proportional_strips(size, weights)
    assert spans[0].start == 0 and spans[-1].stop == size
    assert all(a.stop == b.start for a, b in itertools.pairwise(spans))
    assert len(spans) <= len(weights)
    total = sum(weights)
    exact = sorted(size * w / total for w in weights if size * w / total > 0)
    # Largest-remainder rounding: every strip is within one row of some exact share.
    assert max(sp.size for sp in spans) <= max(exact) + 1

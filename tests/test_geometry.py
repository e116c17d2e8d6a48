"""Pure geometry: receptive fields, border padding, partitions (no torch)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeci_p2p.core.geometry import (
    Region,
    Span,
    check_range,
    grid,
    halo_overhead,
    input_region,
    needed_span,
    op_out_hw,
    proportional_strips,
    receptive_field,
    region_bytes,
    row_strips,
    strips,
    tiles_cover_exactly,
    total_flops,
    trace,
    window_out_size,
)
from edgeci_p2p.core.units import Head, ModelSpec, Op, Unit, Window


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


# ---- receptive fields and halo overhead, on models built by hand ----------------------------


def conv(k: tuple[int, int], s: int = 1, p: tuple[int, int] = (0, 0), d: int = 1) -> Op:
    """A one-channel conv."""
    return Op("conv", 1, 1, Window(k, (s, s), p, (d, d)))


Step = tuple[str, tuple[Op, ...], tuple[Op, ...] | None]


def chain(hw: tuple[int, int], *steps: Step) -> ModelSpec:
    """A model of one unit per step (name, main ops, shortcut or None) from a 1-channel
    ``hw`` input; each unit's output shape follows from its main ops."""
    units: list[Unit] = []
    shape = (1, *hw)
    for k, (name, main, shortcut) in enumerate(steps):
        h, w = shape[1:]
        for op in main:
            h, w = op_out_hw(op, (h, w))
        out = (main[-1].out_channels, h, w)
        kind = "pool" if main[0].kind == "maxpool" else "conv"
        kind = "block" if shortcut is not None else kind
        units.append(Unit(k, name, kind, main, shape, out, shortcut))  # type: ignore[arg-type]
        shape = out
    head = Head("vgg", shape, (1, 1), ((shape[0], 2),), 2)
    return ModelSpec("hand-made", (1, *hw), tuple(units), head)


def test_receptive_field_grows_by_kernel_times_dilation_times_the_jump_so_far() -> None:
    pool = Op("maxpool", 1, 1, Window((2, 2), (2, 2), (0, 0)))
    row3 = conv((1, 3), p=(0, 1))
    spec = chain(
        (64, 64),
        ("c1", (conv((3, 3), p=(1, 1)),), None),  # rf 3, jump 1
        ("c2", (conv((3, 3), s=2, p=(1, 1)), Op("relu", 1, 1)), None),  # rf 5, jump 2
        ("p", (pool,), None),  # rf 5 + 1*2 = 7, jump 4
        ("c3", (conv((3, 1), p=(2, 0), d=2),), None),  # rows 7 + 2*2*4 = 23, cols 7
        # A block: its main path counts (cols + 2*4 twice, past the ReLU between the
        # convs), not its wider shortcut.
        ("b", (row3, Op("relu", 1, 1), row3), (conv((5, 5), p=(2, 2)),)),
    )
    assert [receptive_field(spec, stop) for stop in range(6)] == [
        (1, 1),
        (3, 3),
        (5, 5),
        (7, 7),
        (23, 7),
        (23, 23),
    ]


def test_receptive_field_of_vgg16_features_is_212() -> None:
    from edgeci_p2p.nn.spec import spec_for

    spec = spec_for("vgg16")
    assert receptive_field(spec, spec.n_units) == (212, 212)
    assert receptive_field(spec, 1) == (3, 3)


def test_halo_overhead_counts_the_rows_fused_strips_compute_twice() -> None:
    # Two fused 3x3 convs on 8x8: each half of the output needs 5 rows of the first
    # conv's output (one halo row), 40 pixels instead of 32; the second conv is split
    # without overlap. FLOPs are 2 * 9 per output pixel: (64 + 80) / (64 + 64) - 1.
    spec = chain(
        (8, 8),
        ("c1", (conv((3, 3), p=(1, 1)),), None),
        ("c2", (conv((3, 3), p=(1, 1)),), None),
    )
    halves = row_strips(8, 8, [4])
    assert halo_overhead(spec, 0, 2, halves) == pytest.approx(0.125)
    assert halo_overhead(spec, 1, 2, halves) == 0.0  # one conv: nothing computed twice
    assert halo_overhead(spec, 0, 2, row_strips(8, 8, [])) == 0.0
    # Four strips: three cuts, each adding a halo row on both sides for the first conv.
    quarters = row_strips(8, 8, [2, 4, 6])
    first = 8 * (3 + 4 + 4 + 3)  # pixels of the first conv's output the quarters need
    assert halo_overhead(spec, 0, 2, quarters) == pytest.approx((64 + first) / 128 - 1)


def test_proportional_strips_follow_the_order_and_size_of_their_weights() -> None:
    assert proportional_strips(10, [3, 1, 1]) == [Span(0, 6), Span(6, 8), Span(8, 10)]
    assert proportional_strips(10, [1, 1, 3]) == [Span(0, 2), Span(2, 4), Span(4, 10)]
    # Largest remainder: 7 * (1/3, 2/3) = 2.33, 4.67 -> 2, 5.
    assert proportional_strips(7, [1, 2]) == [Span(0, 2), Span(2, 7)]
    assert proportional_strips(7, [2, 1]) == [Span(0, 5), Span(5, 7)]
    # A zero weight gets no strip; the others keep their order.
    assert proportional_strips(6, [0, 1, 2]) == [Span(0, 2), Span(2, 6)]
    for bad in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError):
            proportional_strips(6, bad)
    with pytest.raises(ValueError):
        proportional_strips(0, [1])


def test_regions_shift_into_a_slab_and_count_their_bytes() -> None:
    assert Span(5, 9).shift(3) == Span(2, 6)
    outer = Region(Span(10, 20), Span(4, 12))
    inner = Region(Span(12, 15), Span(4, 6))
    assert inner.relative_to(outer) == Region(Span(2, 5), Span(0, 2))
    with pytest.raises(ValueError, match=r"rows\[9:15\) cols\[4:6\) is not inside"):
        Region(Span(9, 15), Span(4, 6)).relative_to(outer)
    assert region_bytes(3, inner) == 3 * 6 * 4
    assert region_bytes(3, inner, itemsize=1) == 18


def test_input_region_and_total_flops_of_a_hand_built_model() -> None:
    spec = chain(
        (8, 8),
        ("c1", (conv((3, 3), p=(1, 1)),), None),
        ("c2", (conv((3, 3), p=(1, 1)),), None),
    )
    # Rows 2..3 of the second conv's output need rows 0..5 of the input (a halo row
    # each side per 3x3 conv); all 8 columns (clamped at the borders).
    out = Region(Span(2, 4), Span(0, 8))
    assert input_region(spec, 0, 2, out) == Region(Span(0, 6), Span(0, 8))
    assert input_region(spec, 1, 2, out) == Region(Span(1, 5), Span(0, 8))
    t = trace(spec, 1, 2, out)
    assert (t.start, t.stop, t.out, len(t.units)) == (1, 2, out, 1)
    # 2 x 9 FLOPs per output pixel and conv, then the head: a 1x1 pool over 8x8 and a
    # 1 -> 2 linear layer (2 * 1 * 2 + 2).
    assert total_flops(spec) == 2 * (2 * 9 * 64) + 64 + 6


def test_partitions_and_ranges_refuse_with_what_is_wrong() -> None:
    assert proportional_strips(1, [2, 0]) == [Span(0, 1)]  # one row still splits
    with pytest.raises(ValueError, match=r"^cannot split 0 rows by weights \[1\]$"):
        proportional_strips(0, [1])
    with pytest.raises(ValueError, match=r"^cuts \[3, 3\] do not split \[0, 5\) into non-empty"):
        strips(5, [3, 3])
    spec = chain((8, 8), ("c1", (conv((3, 3), p=(1, 1)),), None))
    with pytest.raises(ValueError, match=r"^unit range \[1, 1\) is not inside 0..1 or empty$"):
        check_range(spec, 1, 1)
    check_range(spec, 0, 1)

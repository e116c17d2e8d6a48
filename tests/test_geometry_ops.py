"""Geometry pinned to exact numbers, op by op and unit by unit (pure; no torch).

tests/test_geometry.py checks the rules on realistic shapes; this file pins every
formula of :mod:`edgeci_p2p.core.geometry` on tiny hand-made ops and units whose
rows and columns, input and output channels all differ, so that swapping any two of
them, or any off-by-one, changes a number below. Each expected value says in a
comment how it was worked out by hand.
"""

from __future__ import annotations

import pytest

from edgeci_p2p.core.geometry import (
    NO_PADDING,
    OpStep,
    Padding,
    Region,
    Span,
    _trace_chain,
    check_range,
    full_flops,
    full_region,
    grid,
    halo_overhead,
    head_flops,
    input_region,
    needed_span,
    op_fixed_flops,
    op_flops,
    op_input,
    op_out_hw,
    proportional_strips,
    receptive_field,
    region_bytes,
    region_flops,
    row_strips,
    strips,
    tiles_cover_exactly,
    total_flops,
    trace,
    trace_unit,
    window_out_size,
)
from edgeci_p2p.core.units import Head, ModelSpec, Op, OpKind, Unit, Window


def R(r0: int, r1: int, c0: int, c1: int) -> Region:
    """rows [r0, r1) x cols [c0, c1)."""
    return Region(Span(r0, r1), Span(c0, c1))


def conv(
    cin: int,
    cout: int,
    k: tuple[int, int] = (3, 3),
    s: tuple[int, int] = (1, 1),
    p: tuple[int, int] = (1, 1),
    d: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: bool = False,
) -> Op:
    return Op("conv", cin, cout, Window(k, s, p, d), groups=groups, bias=bias)


def relu(c: int) -> Op:
    return Op("relu", c, c)


def sescale(c: int, hidden: int) -> Op:
    return Op("sescale", c, c, hidden=hidden)


def se(c: int, hidden: int) -> Op:
    return Op("se", c, c, hidden=hidden)


def spec_of(input_shape: tuple[int, int, int], *units: Unit) -> ModelSpec:
    c, h, w = units[-1].out_shape
    return ModelSpec("ops", input_shape, units, Head("vgg", (c, h, w), (1, 1), ((c, 2),), 2))


# ---- Span, Region, Padding -------------------------------------------------------------------


def test_span_length_hull_containment_and_shift() -> None:
    assert Span(2, 7).size == 5
    assert Span(3, 3).size == 0  # an empty span is allowed (stop == start)
    with pytest.raises(ValueError, match=r"^span \[5, 4\) has negative length$"):
        Span(5, 4)
    # Hull: min of the starts, max of the stops, whichever side each comes from.
    assert Span(2, 5).hull(Span(4, 9)) == Span(2, 9)
    assert Span(4, 9).hull(Span(2, 5)) == Span(2, 9)
    assert Span(1, 9).hull(Span(3, 4)) == Span(1, 9)
    # Containment includes both ends, and fails past either end.
    assert Span(2, 8).contains(Span(2, 8))
    assert Span(2, 8).contains(Span(3, 5))
    assert not Span(2, 8).contains(Span(1, 5))
    assert not Span(2, 8).contains(Span(3, 9))
    # shift(offset) moves both ends down by offset (into a slab starting at offset).
    assert Span(5, 9).shift(-2) == Span(7, 11)
    assert Span(5, 9).shift(0) == Span(5, 9)


def test_region_area_hull_containment_relative_and_str() -> None:
    r = R(1, 4, 2, 6)
    assert r.area == 3 * 4
    assert R(2, 2, 0, 5).area == 0
    # Hull axis by axis: rows from 1..4 and 0..2 -> 0..4; cols 2..6 and 5..9 -> 2..9.
    assert r.hull(R(0, 2, 5, 9)) == R(0, 4, 2, 9)
    assert R(0, 2, 5, 9).hull(r) == R(0, 4, 2, 9)
    assert r.contains(R(1, 4, 2, 6)) and r.contains(R(2, 3, 3, 5))
    assert not r.contains(R(0, 3, 3, 5))  # rows stick out, cols inside
    assert not r.contains(R(2, 3, 3, 7))  # rows inside, cols stick out
    # Relative to a slab at rows 1.., cols 2..: subtract (1, 2).
    assert R(2, 4, 5, 6).relative_to(r) == R(1, 3, 3, 4)
    assert R(1, 4, 2, 6).relative_to(r) == R(0, 3, 0, 4)
    assert str(R(1, 4, 2, 6)) == "rows[1:4) cols[2:6)"
    with pytest.raises(ValueError, match=r"^rows\[0:3\) cols\[3:5\) is not inside rows\[1:4\)"):
        R(0, 3, 3, 5).relative_to(r)
    # Regions order as (rows, cols) tuples.
    assert sorted([R(1, 2, 0, 1), R(0, 5, 3, 4), R(0, 5, 1, 2)]) == [
        R(0, 5, 1, 2),
        R(0, 5, 3, 4),
        R(1, 2, 0, 1),
    ]


def test_full_region_is_rows_then_cols_from_zero() -> None:
    assert full_region(3, 5) == Region(Span(0, 3), Span(0, 5))
    assert full_region(1, 1).area == 1


def test_padding_any_is_true_when_any_side_pads() -> None:
    assert Padding() == Padding(0, 0, 0, 0) == NO_PADDING
    assert not NO_PADDING.any
    assert Padding(top=1).any
    assert Padding(bottom=2).any
    assert Padding(left=1).any
    assert Padding(right=3).any
    assert Padding(1, 1, 1, 1).any


# ---- one axis ---------------------------------------------------------------------------------


def test_window_out_size_formula_term_by_term() -> None:
    # out = (size + 2p - d(k-1) - 1) // s + 1
    assert window_out_size(10, 3, 1, 0) == 8  # (10 - 2 - 1) // 1 + 1
    assert window_out_size(10, 3, 2, 0) == 4  # 7 // 2 + 1
    assert window_out_size(10, 3, 3, 0) == 3  # 7 // 3 + 1
    assert window_out_size(10, 3, 1, 2) == 12  # (10 + 4 - 2 - 1) // 1 + 1
    assert window_out_size(10, 3, 1, 0, 2) == 6  # (10 - 4 - 1) // 1 + 1
    assert window_out_size(10, 3, 1, 0, d=3) == 4  # (10 - 6 - 1) // 1 + 1
    assert window_out_size(11, 3, 2, 1, 2) == 5  # (11 + 2 - 4 - 1) // 2 + 1 = 8 // 2 + 1
    assert window_out_size(12, 5, 3, 1, 2) == 2  # (12 + 2 - 8 - 1) // 3 + 1 = 5 // 3 + 1
    assert window_out_size(5, 1, 1, 0) == 5  # a 1x1 window keeps the size
    assert window_out_size(5, 1, 2, 0) == 3  # 4 // 2 + 1
    # Exactly one window fits (span 0), whatever the stride; one row less and none does
    # (below).
    assert window_out_size(3, 3, 1, 0) == 1
    assert window_out_size(3, 3, 4, 0) == 1
    assert window_out_size(1, 3, 1, 1) == 1  # 1 + 2 - 2 - 1 = 0
    with pytest.raises(ValueError, match=r"^input size 2 is too small for kernel 3 \(padding 0\)$"):
        window_out_size(2, 3, 1, 0)
    with pytest.raises(ValueError, match=r"^input size 4 is too small for kernel 3 \(padding 0\)$"):
        window_out_size(4, 3, 1, 0, d=2)  # 4 - 4 - 1 < 0
    with pytest.raises(ValueError, match=r"^input size 1 is too small for kernel 5 \(padding 1\)$"):
        window_out_size(1, 5, 1, 1)  # 1 + 2 - 4 - 1 < 0
    # The results are ints, not floats.
    assert type(window_out_size(10, 3, 2, 0)) is int
    assert type(window_out_size(10, 3, 2, 0, ceil_mode=True)) is int


def test_window_out_size_ceil_mode() -> None:
    # ceil: -(-span // s) + 1, then drop a last window starting at or past size + p.
    assert window_out_size(8, 2, 3, 0, ceil_mode=True) == 3  # span 6: 6/3 = 2 exactly, + 1
    assert window_out_size(8, 2, 3, 0) == 3
    # span 7: ceil 7/3 = 3, + 1 = 4, but the 4th window starts at 3 * 3 = 9 >= 9 + 0: 3.
    assert window_out_size(9, 2, 3, 0, ceil_mode=True) == 3
    # span 8 on 10 rows: ceil 8/3 = 3, + 1 = 4; the 4th starts at 9 < 10: kept (floor: 3).
    assert window_out_size(10, 2, 3, 0, ceil_mode=True) == 4
    assert window_out_size(10, 2, 3, 0) == 3
    # A window starting exactly at size + p is dropped (>=, not >):
    # size 5, k 2, s 3, p 1: span 5, ceil 5/3 = 2, + 1 = 3; (3 - 1) * 3 = 6 >= 5 + 1 -> 2.
    assert window_out_size(5, 2, 3, 1, ceil_mode=True) == 2
    # size 6, k 2, s 3, p 1: span 6 -> 3 windows; the last starts at 6 < 6 + 1: kept.
    assert window_out_size(6, 2, 3, 1, ceil_mode=True) == 3
    # size 7, k 2, s 3, p 1: span 7, ceil 7/3 = 3, + 1 = 4; 3 * 3 = 9 >= 8 -> 3.
    assert window_out_size(7, 2, 3, 1, ceil_mode=True) == 3
    # size 10, k 2, s 3, p 1: span 10, ceil 4, + 1 = 5; 4 * 3 = 12 >= 11 -> 4.
    assert window_out_size(10, 2, 3, 1, ceil_mode=True) == 4
    # size 11, k 2, s 3, p 1: span 11, ceil 4, + 1 = 5; 12 >= 12 -> 4.
    assert window_out_size(11, 2, 3, 1, ceil_mode=True) == 4
    # size 12, k 2, s 3, p 1: span 12, 12 / 3 = 4, + 1 = 5; 12 < 13 -> kept, 5.
    assert window_out_size(12, 2, 3, 1, ceil_mode=True) == 5
    # Dilation in ceil mode: size 10, k 3, s 2, p 0, d 2: span 5, ceil 3, + 1 = 4;
    # 3 * 2 = 6 < 10 -> 4 (floor gives 5 // 2 + 1 = 3).
    assert window_out_size(10, 3, 2, 0, 2, True) == 4
    assert window_out_size(10, 3, 2, 0, 2) == 3


def test_needed_span_each_term_and_border() -> None:
    # lo = o0*s - p, hi = (o1-1)*s - p + d(k-1); rows lo..hi clamped to [0, size).
    # Interior, k 3, s 2, p 1, d 1: outputs 3..4 -> lo 3*2 - 1 = 5, hi 4*2 - 1 + 2 = 9.
    assert needed_span(Span(3, 5), 20, 3, 2, 1) == (Span(5, 10), 0, 0)
    # Dilation 2: hi = 9 + 2 = 11 (default d is 1, as above).
    assert needed_span(Span(3, 5), 20, 3, 2, 1, 2) == (Span(5, 12), 0, 0)
    assert needed_span(Span(3, 5), 20, 3, 2, 1, d=3) == (Span(5, 14), 0, 0)
    # Stride 3, no padding: lo 9, hi 12 + 2 = 14.
    assert needed_span(Span(3, 5), 20, 3, 3, 0) == (Span(9, 15), 0, 0)
    # Kernel 5, padding 2: lo 6 - 2 = 4, hi 8 - 2 + 4 = 10.
    assert needed_span(Span(3, 5), 20, 5, 2, 2) == (Span(4, 11), 0, 0)
    # Top border: lo = 0 - 2 = -2 -> clamp to 0, 2 rows of padding before.
    assert needed_span(Span(0, 2), 20, 5, 1, 2) == (Span(0, 4), 2, 0)
    # Bottom border, size 10: outputs 8..9 of a 5/1/2 window -> lo 6, hi 9 - 2 + 4 = 11:
    # clamp to 9, 2 rows of padding after.
    assert needed_span(Span(8, 10), 10, 5, 1, 2) == (Span(6, 10), 0, 2)
    # Both borders at once on a tiny input: lo -2, hi 0 - 2 + 4 = 2 on size 2 -> 1 after.
    assert needed_span(Span(0, 1), 2, 5, 1, 2) == (Span(0, 2), 2, 1)
    # hi exactly at the last row: no padding after.
    assert needed_span(Span(7, 8), 10, 3, 1, 0) == (Span(7, 10), 0, 0)
    # lo exactly the last row still reads one real row.
    assert needed_span(Span(3, 4), 4, 1, 1, 0) == (Span(3, 4), 0, 0)
    # hi exactly row 0: one real row and two of padding before.
    assert needed_span(Span(0, 1), 4, 3, 1, 2) == (Span(0, 1), 2, 0)


def test_needed_span_refuses_empty_and_all_padding_outputs() -> None:
    with pytest.raises(ValueError, match=r"^empty output span Span\(start=2, stop=2\)$"):
        needed_span(Span(2, 2), 10, 3, 1, 1)
    with pytest.raises(ValueError, match=r"^empty output span"):
        needed_span(Span(0, 0), 10, 1, 1, 0)
    # lo = 4 > size - 1 = 3: only padding below the map.
    with pytest.raises(ValueError, match=r"reads no real input \(input size 4\)$"):
        needed_span(Span(4, 5), 4, 1, 1, 0)
    # hi = 0 - 2 + 0 = -2 < 0: only padding above the map.
    with pytest.raises(ValueError, match=r"^output span Span\(start=0, stop=1\) reads no real"):
        needed_span(Span(0, 1), 4, 1, 1, 2)
    # hi = -1 with a kernel of 2: 0 - 2 + 1.
    with pytest.raises(ValueError, match=r"reads no real input \(input size 6\)$"):
        needed_span(Span(0, 1), 6, 2, 1, 2)


# ---- ops --------------------------------------------------------------------------------------


def test_op_out_hw_uses_each_axis_own_window() -> None:
    assert op_out_hw(relu(3), (7, 5)) == (7, 5)
    # rows: size 10, k 3, s 2, p 1, d 2, ceil: span 10 + 2 - 4 - 1 = 7, ceil 4, + 1 = 5
    #       (6 < 11: kept). cols: size 8, k 2, s 3, p 0, d 1: span 6, 6 / 3 = 2, + 1 = 3.
    pool = Op("maxpool", 2, 2, Window((3, 2), (2, 3), (1, 0), (2, 1), ceil_mode=True))
    assert op_out_hw(pool, (10, 8)) == (5, 3)
    # Without ceil mode the rows are 7 // 2 + 1 = 4.
    floor_pool = Op("maxpool", 2, 2, Window((3, 2), (2, 3), (1, 0), (2, 1)))
    assert op_out_hw(floor_pool, (10, 8)) == (4, 3)
    # ceil mode on the cols too: 13 cols, k 2, s 3, p 0: span 11, ceil 4, + 1 = 5 (12 < 13:
    # kept); floor 11 // 3 + 1 = 4. Rows as above.
    assert op_out_hw(pool, (10, 13)) == (5, 5)
    assert op_out_hw(floor_pool, (10, 13)) == (4, 4)
    # cols with their own padding and dilation: size 9, k 3, s 1, p 2, d 3:
    # span 9 + 4 - 6 - 1 = 6 -> 7. rows: size 6, k 1, s 2, p 0: span 5 -> 3.
    c = conv(1, 1, k=(1, 3), s=(2, 1), p=(0, 2), d=(1, 3))
    assert op_out_hw(c, (6, 9)) == (3, 7)
    # Swapped input: rows 9 with k 1, s 2 -> 5; cols 6 with k 3, p 2, d 3: 6 + 4 - 7 = 3 -> 4.
    assert op_out_hw(c, (9, 6)) == (5, 4)


def test_op_input_of_each_kind() -> None:
    out = R(1, 3, 2, 4)
    hw = (6, 7)
    # Global ops read the whole input map, given or not, with no padding.
    assert op_input(se(4, 2), out, hw) == (full_region(6, 7), NO_PADDING)
    assert op_input(se(4, 2), out, hw, given=True) == (full_region(6, 7), NO_PADDING)
    # A scale op reads the whole map unless its vector is given (default: not given).
    assert op_input(sescale(4, 2), out, hw) == (full_region(6, 7), NO_PADDING)
    assert op_input(sescale(4, 2), out, hw, False) == (full_region(6, 7), NO_PADDING)
    assert op_input(sescale(4, 2), out, hw, True) == (out, NO_PADDING)
    # Pointwise ops read what they write.
    assert op_input(relu(4), out, hw) == (out, NO_PADDING)
    assert op_input(relu(4), out, hw, True) == (out, NO_PADDING)
    # A window op, rows and cols with their own geometry:
    # rows 1..2 of k 3, s 2, p 1, d 1 on 6 rows: lo 2 - 1 = 1, hi 2 * 2 - 1 + 2 = 5.
    # cols 2..3 of k 3, s 1, p 2, d 2 on 7 cols: lo 2 - 2 = 0, hi 3 - 2 + 4 = 5.
    c = conv(4, 4, k=(3, 3), s=(2, 1), p=(1, 2), d=(1, 2))
    assert op_input(c, out, hw) == (R(1, 6, 0, 6), NO_PADDING)
    # At the borders: rows 0..0 -> lo -1, hi 1 (1 pad before); cols 5..6 -> lo 3,
    # hi 6 - 2 + 4 = 8 on 7 cols (2 pad after, cols 3..6).
    assert op_input(c, R(0, 1, 5, 7), hw) == (R(0, 2, 3, 7), Padding(1, 0, 0, 2))
    # Bottom and left: rows 2..3 (k 3/s 2/p 1) on 6 rows -> lo 3, hi 6 - 1 + 2 = 7: 2 after;
    # cols 0..0 -> lo -2, hi -2 + 4 = 2: 2 before.
    assert op_input(c, R(2, 4, 0, 1), hw) == (R(3, 6, 0, 3), Padding(0, 2, 2, 0))
    # Rows with their own kernel and dilation: k (3, 1), p (2, 0), d (2, 1): rows 1..2 ->
    # lo 1 - 2 = -1, hi 2 - 2 + 2 * 2 = 4 (1 pad before); cols 2..3 of a 1-wide window.
    tall = conv(4, 4, k=(3, 1), p=(2, 0), d=(2, 1))
    assert op_input(tall, out, hw) == (R(0, 5, 2, 4), Padding(1, 0, 0, 0))


def test_op_flops_of_every_kind() -> None:
    area = 5
    # conv: 2 * area * (C_in / groups) * k_h * k_w * C_out, + area * C_out with a bias.
    assert op_flops(conv(4, 6, k=(3, 2)), area) == 2 * 5 * 4 * 6 * 6  # 1440
    assert op_flops(conv(4, 6, k=(3, 2), bias=True), area) == 1440 + 5 * 6  # 1470
    assert op_flops(conv(4, 6, k=(3, 2), groups=2), area) == 2 * 5 * 2 * 6 * 6  # 720
    assert op_flops(conv(4, 6, k=(3, 2), groups=2, bias=True), area) == 720 + 30
    # Integer division by the groups (5 channels in 2 groups count as 2 each).
    assert op_flops(conv(5, 6, k=(3, 2), groups=2), area) == 2 * 5 * 2 * 6 * 6
    assert type(op_flops(conv(4, 6, k=(3, 2), groups=2), area)) is int
    # Stride, padding and dilation change the output area, not the per-pixel cost.
    dilated = conv(4, 6, k=(3, 2), s=(2, 3), p=(0, 0), d=(2, 2))
    assert op_flops(dilated, area) == 1440
    assert op_flops(conv(3, 2, k=(1, 1), p=(0, 0)), 7) == 2 * 7 * 3 * 1 * 2  # 84
    # max-pool: area * C * k_h * k_w comparisons.
    pool = Op("maxpool", 3, 3, Window((3, 2), (2, 2), (0, 0)))
    assert op_flops(pool, area) == 5 * 3 * 3 * 2  # 90
    # linear over channels: area * C_out * (2 * C_in + 1 with a bias).
    assert op_flops(Op("linear", 4, 3), area) == 5 * 3 * 8  # 120
    assert op_flops(Op("linear", 4, 3, bias=True), area) == 5 * 3 * 9  # 135
    # bn: 2 per value; norm: 5 per value.
    assert op_flops(Op("bn", 3, 3), area) == 2 * 5 * 3
    assert op_flops(Op("norm", 3, 3), area) == 5 * 5 * 3
    # free: permutes, identities, slices.
    free: tuple[OpKind, ...] = ("permute", "identity", "slice")
    for kind in free:
        assert op_flops(Op(kind, 4, 4), area) == 0
    # one per output value: relu, act, scale, the multiply of se / sescale.
    per_value: tuple[OpKind, ...] = ("relu", "act", "scale", "se", "sescale")
    for kind in per_value:
        assert op_flops(Op(kind, 4, 3), area) == 5 * 3
    assert op_flops(relu(3), 0) == 0


def test_op_fixed_flops_counts_the_squeeze_and_excitation_once() -> None:
    # C*H*W for the mean, 2 * (2*C*h) for the two 1x1 convs, + h + C for their biases.
    # C 4, h 3, input 5x7: 140 + 48 + 3 + 4 = 195.
    assert op_fixed_flops(se(4, 3), (5, 7)) == 195
    assert op_fixed_flops(sescale(4, 3), (5, 7)) == 195
    # C 6, h 1, input 2x3: 36 + 24 + 1 + 6 = 67.
    assert op_fixed_flops(se(6, 1), (2, 3)) == 67
    for op in (conv(4, 6), relu(4), Op("bn", 4, 4), Op("identity", 4, 4)):
        assert op_fixed_flops(op, (5, 7)) == 0


def test_op_step_flops_add_the_fixed_part_unless_given() -> None:
    op = sescale(4, 3)
    out = R(0, 2, 0, 3)  # area 6: 6 * 4 = 24 for the multiply
    step = OpStep(op, (5, 7), full_region(5, 7), NO_PADDING, out)
    assert not step.given
    assert step.flops == 24 + 195
    assert OpStep(op, (5, 7), out, NO_PADDING, out, True).flops == 24
    assert OpStep(relu(4), (5, 7), out, NO_PADDING, out).flops == 24


# ---- units and traces -------------------------------------------------------------------------


def test_trace_unit_of_a_plain_conv_unit() -> None:
    # 2 -> 3 channels, 3x3/1/1 conv on 6x5, then a ReLU.
    u = Unit(0, "c", "conv", (conv(2, 3), relu(3)), (2, 6, 5), (3, 6, 5))
    out = R(2, 4, 3, 5)
    t = trace_unit(u, out)
    # rows 2..3 -> 1..4; cols 3..4 on 5 cols -> lo 2, hi 5: cols 2..4, 1 pad after.
    assert t.need == R(1, 5, 2, 5)
    assert t.out == out
    assert t.shortcut is None and t.post == () and t.more == ()
    c_step, r_step = t.main
    assert (c_step.in_hw, c_step.need, c_step.pad, c_step.out) == (
        (6, 5),
        R(1, 5, 2, 5),
        Padding(0, 0, 0, 1),
        out,
    )
    assert (r_step.in_hw, r_step.need, r_step.pad, r_step.out) == ((6, 5), out, NO_PADDING, out)
    assert t.steps == (c_step, r_step)
    # conv 2 * 4 * 2 * 9 * 3 = 432, relu 4 * 3 = 12; no residual add outside a block.
    assert t.flops == 444
    # The whole map: conv 2 * 30 * 2 * 9 * 3 = 3240 + 90.
    assert trace_unit(u, full_region(6, 5)).flops == 3330


def test_trace_unit_refuses_regions_outside_or_empty() -> None:
    u = Unit(0, "c7", "conv", (conv(2, 3),), (2, 6, 5), (3, 6, 5))
    with pytest.raises(
        ValueError, match=r"^unit c7: output region rows\[0:7\) cols\[0:5\) outside"
    ):
        trace_unit(u, R(0, 7, 0, 5))
    with pytest.raises(ValueError, match=r"cols\[0:6\) outside its 6x5 map$"):
        trace_unit(u, R(0, 6, 0, 6))
    with pytest.raises(ValueError, match=r"^unit c7: output region rows\[2:2\) cols\[0:5\)"):
        trace_unit(u, R(2, 2, 0, 5))
    with pytest.raises(ValueError, match=r"outside its 6x5 map$"):
        trace_unit(u, R(0, 6, 1, 1))
    # The edges of the map are inside.
    assert trace_unit(u, R(5, 6, 4, 5)).out == R(5, 6, 4, 5)


def test_trace_unit_of_a_residual_block_with_a_wider_shortcut() -> None:
    # main 1x1 conv, shortcut 3x3/1/1 conv, then ReLU on the sum; 2 channels on 8x8.
    main = (conv(2, 2, k=(1, 1), p=(0, 0)),)
    short = (conv(2, 2),)
    u = Unit(0, "b", "block", main, (2, 8, 8), (2, 8, 8), short, (relu(2),))
    out = R(0, 2, 3, 5)
    t = trace_unit(u, out)
    # post ReLU reads out; main reads out; shortcut rows lo -1 hi 2 -> 0..2 (1 pad
    # before), cols lo 2 hi 5 -> 2..5. The unit needs the hull.
    assert [s.need for s in t.main] == [out]
    assert t.shortcut is not None
    assert [(s.need, s.pad) for s in t.shortcut] == [(R(0, 3, 2, 6), Padding(1, 0, 0, 0))]
    assert [s.need for s in t.post] == [out]
    assert t.need == R(0, 3, 2, 6)
    assert t.steps == t.main + t.shortcut + t.post
    # relu 4 * 2 = 8, main 2 * 4 * 2 * 1 * 2 = 32, shortcut 2 * 4 * 2 * 9 * 2 = 288,
    # residual add 4 * 2 = 8.
    assert t.flops == 8 + 32 + 288 + 8
    # An identity shortcut: () reads out itself; the main 3x3 conv decides the need.
    u2 = Unit(0, "b2", "block", short, (2, 8, 8), (2, 8, 8), ())
    t2 = trace_unit(u2, out)
    assert t2.shortcut == ()
    assert t2.need == R(0, 3, 2, 6)
    assert t2.steps == t2.main
    assert t2.flops == 288 + 8  # conv + the add
    # A block whose main path is wider than its shortcut.
    u3 = Unit(0, "b3", "block", short, (2, 8, 8), (2, 8, 8), main)
    assert trace_unit(u3, out).need == R(0, 3, 2, 6)


def test_trace_unit_of_a_concatenation_of_four_branches() -> None:
    # main: identity; shortcut: 1x1 conv; more: a 3x3/1/1 conv, and another identity.
    # Channels 2 + 2 + 2 + 2 = 8, all 6x6.
    c1 = conv(2, 2, k=(1, 1), p=(0, 0))
    c3 = conv(2, 2)
    u = Unit(0, "cat", "block", (), (2, 6, 6), (8, 6, 6), (c1,), merge="cat", more=((c3,), ()))
    out = R(2, 4, 0, 3)
    t = trace_unit(u, out)
    assert t.main == ()
    assert t.shortcut is not None and [s.need for s in t.shortcut] == [out]
    assert len(t.more) == 2 and t.more[1] == ()
    # The 3x3 branch: rows lo 1 hi 4 -> 1..4; cols lo -1 hi 3 -> 0..3, 1 pad before.
    ((s3,),) = t.more[:1]
    assert (s3.need, s3.pad, s3.out) == (R(1, 5, 0, 4), Padding(0, 0, 1, 0), out)
    assert t.need == R(1, 5, 0, 4)
    assert t.steps == (t.shortcut[0], s3)
    # 1x1: 2 * 6 * 2 * 1 * 2 = 48; 3x3: 2 * 6 * 2 * 9 * 2 = 432; a concatenation adds nothing.
    assert t.flops == 480
    # The wide branch last: the hull still takes it; an identity branch after it too.
    u2 = Unit(0, "cat2", "block", (c1,), (2, 6, 6), (6, 6, 6), (), merge="cat", more=((c3,),))
    assert trace_unit(u2, out).need == R(1, 5, 0, 4)
    u3 = Unit(0, "cat3", "block", (c1,), (2, 6, 6), (6, 6, 6), (c1,), merge="cat", more=((),))
    assert trace_unit(u3, out).need == out
    # Branch order in steps: main, shortcut, more..., post.
    u4 = Unit(
        0,
        "cat4",
        "block",
        (c3,),
        (2, 6, 6),
        (6, 6, 6),
        (c1,),
        (relu(6),),
        merge="cat",
        more=((Op("bn", 2, 2),),),
    )
    t4 = trace_unit(u4, out)
    assert [s.op.kind for s in t4.steps] == ["conv", "conv", "bn", "relu"]
    assert [s.op for s in t4.steps][:2] == [c3, c1]


def test_trace_unit_scale_vector_given_only_when_first() -> None:
    # conv 3x3/1/1 2 -> 4 then a sescale (hidden 2) on a 6x5 map.
    u = Unit(0, "s", "conv", (conv(2, 4), sescale(4, 2)), (2, 6, 5), (4, 6, 5))
    out = R(1, 3, 1, 2)  # area 2
    first = trace_unit(u, out)  # first=True by default: the vector comes with the work
    assert [s.given for s in first.main] == [False, True]
    assert first.main[1].need == out
    assert first.need == R(0, 4, 0, 3)
    # sescale 2 * 4 = 8; conv 2 * 2 * 2 * 9 * 4 = 288.
    assert first.flops == 296
    assert trace_unit(u, out, True) == first
    deep = trace_unit(u, out, first=False)
    assert [s.given for s in deep.main] == [False, False]
    # The sescale reads the whole 6x5 map, so the conv runs on it all, padded all round.
    assert deep.main[1].need == full_region(6, 5)
    assert (deep.main[0].need, deep.main[0].pad) == (full_region(6, 5), Padding(1, 1, 1, 1))
    assert deep.need == full_region(6, 5)
    # 8 + fixed (4 * 30 + 2 * 2 * 4 * 2 + 2 + 4 = 158) + conv 2 * 30 * 2 * 9 * 4 = 4320.
    assert deep.flops == 8 + 158 + 4320


def test_trace_chain_given_only_for_scale_ops() -> None:
    # conv 3x3/1/1 (2 -> 4) then sescale on 6x5; output rows 1..2, col 1.
    ops = (conv(2, 4), sescale(4, 2))
    out = R(1, 3, 1, 2)
    # Not given by default: the sescale reads the whole map, the conv computes all of it.
    default = _trace_chain(ops, (6, 5), out)
    assert [(s.given, s.in_hw, s.need, s.out) for s in default] == [
        (False, (6, 5), full_region(6, 5), full_region(6, 5)),
        (False, (6, 5), full_region(6, 5), out),
    ]
    given = _trace_chain(ops, (6, 5), out, True)
    assert [(s.given, s.need, s.out) for s in given] == [
        (False, R(0, 4, 0, 3), out),
        (True, out, out),
    ]
    assert _trace_chain((), (6, 5), out) == ()


def test_trace_unit_scale_vectors_in_every_branch_follow_first() -> None:
    # A concatenation on a 4x6 map: main a 1x1 conv, shortcut and a third branch a
    # sescale each, then a sescale on the 6 concatenated channels.
    c1 = conv(2, 2, k=(1, 1), p=(0, 0))
    u = Unit(
        0,
        "scat",
        "block",
        (c1,),
        (2, 4, 6),
        (6, 4, 6),
        (sescale(2, 1),),
        (sescale(6, 1),),
        merge="cat",
        more=((sescale(2, 1),),),
    )
    out = R(1, 2, 1, 3)  # area 2
    t = trace_unit(u, out)
    assert [s.given for s in t.steps] == [False, True, True, True]
    assert [s.need for s in t.steps] == [out] * 4
    assert t.need == out
    # post 2 * 6 = 12, main 2 * 2 * 2 * 1 * 2 = 16, shortcut and third branch 2 * 2 each.
    assert t.flops == 12 + 16 + 4 + 4
    deep = trace_unit(u, out, first=False)
    assert [s.given for s in deep.steps] == [False] * 4
    assert deep.need == full_region(4, 6)
    # post 12 + fixed 6 * 24 + 4 * 6 * 1 + 1 + 6 = 175; then all 24 pixels: main
    # 2 * 24 * 2 * 2 = 192; each sescale branch 24 * 2 = 48 + fixed 2 * 24 + 8 + 1 + 2 = 59.
    assert deep.flops == 12 + 175 + 192 + 2 * (48 + 59)


def test_trace_unit_post_chain_runs_on_the_output_map() -> None:
    # A block on a 4x6 map with an se after the add: the post se reads the whole 4x6
    # output, so both branches compute all of it.
    c1 = conv(2, 2, k=(1, 1), p=(0, 0))
    u = Unit(0, "bse", "block", (c1,), (2, 4, 6), (2, 4, 6), (), (se(2, 1),))
    t = trace_unit(u, R(1, 2, 1, 2))
    assert [(s.in_hw, s.need) for s in t.post] == [((4, 6), full_region(4, 6))]
    assert [(s.in_hw, s.out) for s in t.main] == [((4, 6), full_region(4, 6))]
    assert t.need == full_region(4, 6)
    # se: multiply 1 * 2 + fixed 2 * 24 + 2 * 2 * 2 * 1 + 1 + 2 = 59; main 1x1 conv over
    # 24 pixels 2 * 24 * 2 * 2 = 192; the add over the output region 1 * 2.
    assert t.flops == 2 + 59 + 192 + 2
    # A post conv on the output map: rows 3..3 of 3x3/1/1 on 4 rows -> 2..3, 1 pad after.
    u2 = Unit(0, "bc", "block", (c1,), (2, 4, 6), (2, 4, 6), (), (conv(2, 2),))
    t2 = trace_unit(u2, R(3, 4, 0, 1))
    assert [(s.need, s.pad) for s in t2.post] == [(R(2, 4, 0, 2), Padding(0, 1, 1, 0))]
    assert t2.main[0].out == R(2, 4, 0, 2)
    assert t2.need == R(2, 4, 0, 2)


def _strided_spec() -> ModelSpec:
    """A 1x9x7 input, a 3x3/2/1 conv (1 -> 2 channels, 5x4), then a unit with a 3x3/1/1
    conv (2 -> 4) and a sescale (hidden 2)."""
    u0 = Unit(0, "c0", "conv", (conv(1, 2, s=(2, 2)),), (1, 9, 7), (2, 5, 4))
    u1 = Unit(1, "s1", "conv", (conv(2, 4), sescale(4, 2)), (2, 5, 4), (4, 5, 4))
    return spec_of((1, 9, 7), u0, u1)


def test_trace_of_a_range_marks_only_its_first_unit_first() -> None:
    spec = _strided_spec()
    out = R(0, 1, 0, 1)
    # From boundary 1, unit 1 starts the range: the vector is given.
    t1 = trace(spec, 1, 2, out)
    assert (t1.start, t1.stop, len(t1.units)) == (1, 2, 1)
    assert t1.out == out
    assert t1.need == R(0, 2, 0, 2)  # the 3x3/1/1 conv at the corner
    assert t1.units[0].main[1].given
    # sescale 1 * 4 = 4; conv 2 * 1 * 2 * 9 * 4 = 144.
    assert t1.flops == 148
    assert region_flops(spec, 1, 2, out) == 148
    assert input_region(spec, 1, 2, out) == R(0, 2, 0, 2)
    # From boundary 0, unit 1 is deeper in the range: it reads its whole 5x4 input, so
    # unit 0 computes all of it from the whole 9x7 input.
    t0 = trace(spec, 0, 2, out)
    assert (t0.start, t0.stop, len(t0.units)) == (0, 2, 2)
    assert t0.units[1].need == full_region(5, 4)
    assert t0.units[0].out == full_region(5, 4)
    assert t0.need == full_region(9, 7)
    assert not t0.units[1].main[1].given
    # unit 1: 4 + fixed (4 * 20 + 2 * 2 * 4 * 2 + 2 + 4 = 118) + conv over 20 pixels
    # 2 * 20 * 2 * 9 * 4 = 2880; unit 0: 2 * 20 * 1 * 9 * 2 = 720.
    assert t0.flops == 4 + 118 + 2880 + 720
    assert region_flops(spec, 0, 2, out) == 3722
    # Unit 0 alone, rows 1..2 and cols 3..3 of its output: rows lo 1 hi 5 -> 1..5;
    # cols lo 5 hi 7 on 7 cols -> 5..6, 1 pad after.
    t = trace(spec, 0, 1, R(1, 3, 3, 4))
    assert t.need == R(1, 6, 5, 7)
    assert t.units[0].main[0].pad == Padding(0, 0, 0, 1)
    assert t.flops == 2 * 2 * 1 * 9 * 2


def test_full_head_and_total_flops() -> None:
    spec = _strided_spec()
    # Unit 0 whole: 2 * 20 * 9 * 2 = 720. Unit 1 whole from boundary 1 (vector given):
    # multiply 20 * 4 = 80 + conv 2880.
    assert full_flops(spec, 0, 1) == 720
    assert full_flops(spec, 1, 2) == 2960
    # From 0: unit 1 not first -> + its fixed 118.
    assert full_flops(spec, 0, 2) == 720 + 2960 + 118
    # Head: 4 channels, 5x4 map, 1x1 pool -> 4 * 20 = 80; linear 4 -> 2: 16 + 2.
    assert head_flops(spec) == 98
    assert total_flops(spec) == 3798 + 98
    assert halo_overhead(spec, 1, 2, [full_region(5, 4)]) == 0.0
    # Two column halves of unit 1 from boundary 1 (one 3x3 conv and a pointwise multiply):
    # their inputs overlap, but each output is computed once, so no extra FLOPs.
    halves = [R(0, 5, 0, 2), R(0, 5, 2, 4)]
    assert halo_overhead(spec, 1, 2, halves) == 0.0
    # Each half of unit 0 alone costs half of it.
    assert halo_overhead(spec, 0, 1, [R(0, 5, 0, 2)]) == -0.5


def test_head_flops_pool_is_at_least_its_output_size() -> None:
    def spec_with(head: Head) -> ModelSpec:
        c, h, w = head.in_shape
        u = Unit(0, "i", "conv", (relu(c),), (c, h, w), (c, h, w))
        return ModelSpec("h", (c, h, w), (u,), head)

    # VGG: a 7x7 adaptive pool on a 2x3 map costs 3 * 49 = 147 (it upsamples);
    # linear 3*49 -> 5: 2 * 147 * 5 + 5 = 1475; 5 -> 2: 20 + 2 = 22.
    vgg = Head("vgg", (3, 2, 3), (7, 7), ((147, 5), (5, 2)), 2)
    assert head_flops(spec_with(vgg)) == 147 + 1475 + 22
    # A 7x1 pool on the same map: 7 > 6 -> 3 * 7 = 21; a 1x1 pool: 3 * 6 = 18.
    assert head_flops(spec_with(Head("vgg", (3, 2, 3), (7, 1), (), 2))) == 21
    assert head_flops(spec_with(Head("vgg", (3, 2, 3), (1, 7), (), 2))) == 21
    assert head_flops(spec_with(Head("resnet", (3, 2, 3), (1, 1), (), 2))) == 18
    # A 2x2 pool on a 5x1 map: 5 > 4 -> 3 * 5.
    assert head_flops(spec_with(Head("resnet", (3, 5, 1), (2, 2), (), 2))) == 15
    # linear (a, b) -> 2ab + b: (3, 4) -> 28, (4, 6) -> 54.
    lin = Head("resnet", (3, 1, 1), (1, 1), ((3, 4), (4, 6)), 6)
    assert head_flops(spec_with(lin)) == 3 + 28 + 54


def test_check_range_bounds() -> None:
    spec = _strided_spec()  # 2 units
    check_range(spec, 0, 2)
    check_range(spec, 1, 2)
    check_range(spec, 0, 1)
    for start, stop in ((-1, 1), (1, 1), (2, 1), (0, 3), (2, 3)):
        with pytest.raises(
            ValueError, match=rf"^unit range \[{start}, {stop}\) is not inside 0..2"
        ):
            check_range(spec, start, stop)
    with pytest.raises(ValueError, match=r"^unit range \[1, 3\)"):
        trace(spec, 1, 3, R(0, 1, 0, 1))


def test_receptive_field_is_the_whole_input_past_a_global_op() -> None:
    spec = _strided_spec()
    # Past unit 0 (3x3, stride 2): 3. Unit 1 multiplies by a scale vector from its
    # whole input: the whole 9x7 input.
    assert receptive_field(spec, 0) == (1, 1)
    assert receptive_field(spec, 1) == (3, 3)
    assert receptive_field(spec, 2) == (9, 7)
    # The same with a whole se.
    u0 = Unit(0, "c0", "conv", (conv(1, 2, s=(2, 2)),), (1, 9, 7), (2, 5, 4))
    u1 = Unit(1, "e1", "conv", (conv(2, 4), se(4, 2)), (2, 5, 4), (4, 5, 4))
    spec_se = spec_of((1, 9, 7), u0, u1)
    assert receptive_field(spec_se, 1) == (3, 3)
    assert receptive_field(spec_se, 2) == (9, 7)
    # Rows and cols each with their own kernel, dilation and stride, past a windowless
    # op: ReLU, then conv k (3, 1), d (2, 1), s (1, 2): rows 1 + 2 * 2 * 1 = 5, cols 1;
    # jumps (1, 2). conv k (1, 3), s 2: rows 5, cols 1 + 2 * 1 * 2 = 5; jumps (2, 4).
    # conv k 3, s 1: rows 5 + 2 * 2 = 9, cols 5 + 2 * 4 = 13.
    a = conv(1, 1, k=(3, 1), s=(1, 2), p=(2, 0), d=(2, 1))
    b = conv(1, 1, k=(1, 3), s=(2, 2), p=(0, 1))
    ua = Unit(0, "a", "conv", (relu(1), a), (1, 9, 9), (1, 9, 5))
    ub = Unit(1, "b", "conv", (b,), (1, 9, 5), (1, 5, 3))
    uc = Unit(2, "c", "conv", (conv(1, 1),), (1, 5, 3), (1, 5, 3))
    spec2 = spec_of((1, 9, 9), ua, ub, uc)
    assert [receptive_field(spec2, stop) for stop in (1, 2, 3)] == [(5, 1), (5, 5), (9, 13)]


# ---- partitions -------------------------------------------------------------------------------


def test_strips_at_cuts() -> None:
    assert strips(5, []) == [Span(0, 5)]
    assert strips(5, [1]) == [Span(0, 1), Span(1, 5)]
    assert strips(5, [1, 4]) == [Span(0, 1), Span(1, 4), Span(4, 5)]
    assert strips(1, []) == [Span(0, 1)]
    for bad in ([0], [5], [3, 2], [6]):
        with pytest.raises(ValueError, match=r"do not split \[0, 5\) into non-empty strips$"):
            strips(5, bad)
    with pytest.raises(ValueError, match=r"^cuts \[\] do not split \[0, 0\)"):
        strips(0, [])


def test_proportional_strips_rounding() -> None:
    # Equal weights, equal remainders: the first strips get the extra rows.
    assert proportional_strips(5, [1, 1]) == [Span(0, 3), Span(3, 5)]
    assert proportional_strips(7, [1, 1, 1]) == [Span(0, 3), Span(3, 5), Span(5, 7)]
    # 10 * (0.25, 0.25, 0.5) = 2.5, 2.5, 5: one leftover row to the first 2.5.
    assert proportional_strips(10, [1, 1, 2]) == [Span(0, 3), Span(3, 5), Span(5, 10)]
    # 10 * (0.15, 0.45, 0.4) = 1.5, 4.5, 4: one leftover to the first .5.
    assert proportional_strips(10, [0.15, 0.45, 0.4]) == [Span(0, 2), Span(2, 6), Span(6, 10)]
    # 9 * (0.1, 0.3, 0.6) = 0.9, 2.7, 5.4: 0 + 2 + 5 = 7, two leftovers to .9 and .7.
    assert proportional_strips(9, [1, 3, 6]) == [Span(0, 1), Span(1, 4), Span(4, 9)]
    # 9 * (6, 3, 1) / 10 = 5.4, 2.7, 0.9 -> 5, 3, 1.
    assert proportional_strips(9, [6, 3, 1]) == [Span(0, 5), Span(5, 8), Span(8, 9)]
    # Exact shares need no rounding.
    assert proportional_strips(6, [1, 2]) == [Span(0, 2), Span(2, 6)]
    assert proportional_strips(4, [1]) == [Span(0, 4)]
    # Weights need not sum to 1, nor be integers: 8 * (0.5, 1.5) / 2 = 2, 6.
    assert proportional_strips(8, [0.5, 1.5]) == [Span(0, 2), Span(2, 8)]
    # 3 rows, 4 equal weights: 0.75 each -> the first three get a row, the last none.
    assert proportional_strips(3, [1, 1, 1, 1]) == [Span(0, 1), Span(1, 2), Span(2, 3)]
    # A zero weight between others is dropped and the next strip starts where the
    # previous one stopped.
    assert proportional_strips(6, [1, 0, 2]) == [Span(0, 2), Span(2, 6)]
    assert proportional_strips(6, [1, 2, 0]) == [Span(0, 2), Span(2, 6)]


def test_proportional_strips_refuses_bad_weights() -> None:
    # A negative weight is refused even when the sum is positive.
    with pytest.raises(ValueError, match=r"^cannot split 6 rows by weights \[3, -1\]$"):
        proportional_strips(6, [3, -1])
    with pytest.raises(ValueError, match=r"^cannot split 6 rows by weights \[\]$"):
        proportional_strips(6, [])
    with pytest.raises(ValueError, match=r"^cannot split 6 rows by weights \[0, 0\]$"):
        proportional_strips(6, [0, 0])
    with pytest.raises(ValueError, match=r"^cannot split -1 rows by weights \[1\]$"):
        proportional_strips(-1, [1])
    with pytest.raises(ValueError, match=r"^cannot split 0 rows by weights \[1\]$"):
        proportional_strips(0, [1])
    assert proportional_strips(1, [1]) == [Span(0, 1)]  # one row is enough
    with pytest.raises(ValueError, match=r"^cannot split 4 rows by weights \[1, -2\]$"):
        proportional_strips(4, [1, -2])


def test_grid_and_row_strips_exact_tiles() -> None:
    # Row-major: rows 0..0 then 1..3, each split at col 2 of 5.
    assert grid(4, 5, [1], [2]) == [R(0, 1, 0, 2), R(0, 1, 2, 5), R(1, 4, 0, 2), R(1, 4, 2, 5)]
    assert grid(4, 5, [], []) == [R(0, 4, 0, 5)]
    assert grid(4, 5, [], [3]) == [R(0, 4, 0, 3), R(0, 4, 3, 5)]
    assert row_strips(4, 5, [1, 3]) == [R(0, 1, 0, 5), R(1, 3, 0, 5), R(3, 4, 0, 5)]
    assert row_strips(4, 5, []) == [R(0, 4, 0, 5)]
    with pytest.raises(ValueError, match=r"split \[0, 5\)"):
        grid(4, 5, [1], [5])
    with pytest.raises(ValueError, match=r"split \[0, 4\)"):
        grid(4, 5, [4], [1])
    with pytest.raises(ValueError, match=r"split \[0, 4\)"):
        row_strips(4, 5, [0])


def test_tiles_cover_exactly_overlap_gap_and_bounds() -> None:
    quarters = [R(0, 2, 0, 3), R(0, 2, 3, 5), R(2, 4, 0, 3), R(2, 4, 3, 5)]
    assert tiles_cover_exactly(quarters, 4, 5)
    assert tiles_cover_exactly(iter(quarters), 4, 5)  # any iterable
    assert tiles_cover_exactly([R(0, 4, 0, 5)], 4, 5)
    assert not tiles_cover_exactly(quarters[:3], 4, 5)  # a gap
    assert not tiles_cover_exactly([*quarters, R(1, 2, 1, 2)], 4, 5)  # one pixel twice
    # One pixel in common between two tiles, the rest exact.
    assert not tiles_cover_exactly([R(0, 2, 0, 3), R(0, 2, 2, 5), *quarters[2:]], 4, 5)
    # A tile past the bottom or the right edge, though the rest would tile the map.
    assert not tiles_cover_exactly([R(0, 2, 0, 5), R(2, 5, 0, 5)], 4, 5)
    assert not tiles_cover_exactly([R(0, 4, 0, 3), R(0, 4, 3, 6)], 4, 5)
    # Gaps in the last row or the last column only.
    assert not tiles_cover_exactly([R(0, 3, 0, 5)], 4, 5)
    assert not tiles_cover_exactly([R(0, 4, 0, 4)], 4, 5)
    assert not tiles_cover_exactly([R(1, 4, 0, 5)], 4, 5)
    assert not tiles_cover_exactly([R(0, 4, 1, 5)], 4, 5)
    assert not tiles_cover_exactly([], 4, 5)
    assert tiles_cover_exactly([], 0, 0)
    # Empty tiles cover nothing and are allowed.
    assert tiles_cover_exactly([R(0, 4, 0, 5), R(2, 2, 1, 3)], 4, 5)


def test_region_bytes_channels_area_itemsize() -> None:
    # 3 channels x (2 x 5) x 4 bytes; the default item is a float32.
    assert region_bytes(3, R(1, 3, 0, 5)) == 120
    assert region_bytes(3, R(1, 3, 0, 5), 2) == 60
    assert region_bytes(7, R(0, 0, 0, 5)) == 0

"""Receptive-field geometry, FLOPs and bytes of regions of units (pure; no torch).

Conventions (see docs/architecture.md and BRIEF 2.1):

* A :class:`Span` is a half-open interval ``[start, stop)`` of rows or columns.
* Cut points ("boundaries") are numbered 0..n: boundary 0 is the network input,
  boundary k is the output of unit k-1. A *unit range* ``[start, stop)`` runs
  units ``start .. stop-1``: it consumes the map at boundary ``start`` and
  produces the map at boundary ``stop``.
* For an output span ``[o0, o1)`` of a window op (kernel k, stride s, padding p,
  dilation d) over an input of size H, the rows needed are
  ``lo = o0*s - p`` .. ``hi = (o1-1)*s - p + d*(k-1)`` (inclusive), clamped to
  ``[0, H-1]``. Padding is applied only where the slab touches a real border:
  ``pad_before = max(0, -lo)``, ``pad_after = max(0, hi - (H-1))``. An interior
  cut gets the real neighbouring rows instead. This is the rule that the
  DeepThings code gets wrong for 3x3/2/1 pools (it assumes k == s).

A :class:`Trace` records, for every op of a unit range, which region it reads,
how it pads and which region it writes. The executor follows a trace step by
step, and the cost model sums FLOPs over the same trace, so what is planned is
what is run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgeci_p2p.core.units import GLOBAL, SCALED, ModelSpec, Op, Unit, Window

FLOAT32_BYTES = 4


@dataclass(frozen=True, order=True)
class Span:
    """Half-open interval ``[start, stop)`` of rows or columns."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.stop < self.start:
            raise ValueError(f"span [{self.start}, {self.stop}) has negative length")

    @property
    def size(self) -> int:
        return self.stop - self.start

    def hull(self, other: Span) -> Span:
        return Span(min(self.start, other.start), max(self.stop, other.stop))

    def contains(self, other: Span) -> bool:
        return self.start <= other.start and other.stop <= self.stop

    def shift(self, offset: int) -> Span:
        return Span(self.start - offset, self.stop - offset)


@dataclass(frozen=True, order=True)
class Region:
    """A rectangle of a feature map: rows x cols (all channels)."""

    rows: Span
    cols: Span

    @property
    def area(self) -> int:
        return self.rows.size * self.cols.size

    def hull(self, other: Region) -> Region:
        return Region(self.rows.hull(other.rows), self.cols.hull(other.cols))

    def contains(self, other: Region) -> bool:
        return self.rows.contains(other.rows) and self.cols.contains(other.cols)

    def relative_to(self, outer: Region) -> Region:
        """This region in the coordinates of a slab that holds ``outer``."""
        if not outer.contains(self):
            raise ValueError(f"{self} is not inside {outer}")
        return Region(self.rows.shift(outer.rows.start), self.cols.shift(outer.cols.start))

    def __str__(self) -> str:
        return f"rows[{self.rows.start}:{self.rows.stop}) cols[{self.cols.start}:{self.cols.stop})"


def full_region(height: int, width: int) -> Region:
    return Region(Span(0, height), Span(0, width))


@dataclass(frozen=True)
class Padding:
    """Border padding to add to a slab before running a window op with padding=0."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    @property
    def any(self) -> bool:
        return bool(self.top or self.bottom or self.left or self.right)


NO_PADDING = Padding()


# ---- one axis ---------------------------------------------------------------------------


def window_out_size(size: int, k: int, s: int, p: int, d: int = 1, ceil_mode: bool = False) -> int:
    """Output size of a conv/pool along one axis, exactly as PyTorch computes it."""
    span = size + 2 * p - d * (k - 1) - 1
    if span < 0:
        raise ValueError(f"input size {size} is too small for kernel {k} (padding {p})")
    if ceil_mode:
        out = -(-span // s) + 1
        # PyTorch drops a last window that would start in the right padding.
        if (out - 1) * s >= size + p:
            out -= 1
        return out
    return span // s + 1


def needed_span(out: Span, size: int, k: int, s: int, p: int, d: int = 1) -> tuple[Span, int, int]:
    """Input span (clamped to ``[0, size)``) and (pad_before, pad_after) for output ``out``."""
    if out.size <= 0:
        raise ValueError(f"empty output span {out}")
    lo = out.start * s - p
    hi = (out.stop - 1) * s - p + d * (k - 1)
    if lo > size - 1 or hi < 0:
        raise ValueError(f"output span {out} reads no real input (input size {size})")
    return Span(max(lo, 0), min(hi, size - 1) + 1), max(0, -lo), max(0, hi - (size - 1))


# ---- ops ----------------------------------------------------------------------------------


def op_out_hw(op: Op, hw: tuple[int, int]) -> tuple[int, int]:
    if op.window is None:
        return hw
    w = op.window
    return (
        window_out_size(hw[0], w.kernel[0], w.stride[0], w.padding[0], w.dilation[0], w.ceil_mode),
        window_out_size(hw[1], w.kernel[1], w.stride[1], w.padding[1], w.dilation[1], w.ceil_mode),
    )


def op_input(
    op: Op, out: Region, in_hw: tuple[int, int], given: bool = False
) -> tuple[Region, Padding]:
    """The input region an op reads to produce ``out``, and the border padding it needs.
    ``given``: a ``sescale`` op's scale vector comes with the work (else it reads the
    whole map to make it)."""
    if op.kind in GLOBAL or (op.kind in SCALED and not given):
        return full_region(*in_hw), NO_PADDING
    if op.window is None:
        return out, NO_PADDING
    w: Window = op.window
    rows, top, bottom = needed_span(
        out.rows, in_hw[0], w.kernel[0], w.stride[0], w.padding[0], w.dilation[0]
    )
    cols, left, right = needed_span(
        out.cols, in_hw[1], w.kernel[1], w.stride[1], w.padding[1], w.dilation[1]
    )
    return Region(rows, cols), Padding(top, bottom, left, right)


def op_flops(op: Op, out_area: int) -> int:
    """FLOPs of an op producing ``out_area`` output pixels (all channels), less
    :func:`op_fixed_flops`.

    conv: ``2 * out_pixels * C_in/groups * k*k * C_out`` plus one add per output
    for a bias; per-pixel linear: the same with k = 1; max-pool: one comparison
    per window element; BN (eval): a multiply and an add; LayerNorm: about five per
    value; other activations and scales: one (hard-swish, GELU and SiLU cost a few,
    but next to the convs they are noise); permutes and identities: none; a
    squeeze-and-excitation: its multiply, one per output value.
    """
    if op.kind == "conv":
        assert op.window is not None
        kk = op.window.kernel[0] * op.window.kernel[1]
        macs = out_area * (op.in_channels // op.groups) * kk * op.out_channels
        return 2 * macs + (out_area * op.out_channels if op.bias else 0)
    if op.kind == "maxpool":
        assert op.window is not None
        return out_area * op.out_channels * op.window.kernel[0] * op.window.kernel[1]
    if op.kind == "linear":
        return out_area * op.out_channels * (2 * op.in_channels + (1 if op.bias else 0))
    if op.kind == "bn":
        return 2 * out_area * op.out_channels
    if op.kind == "norm":
        return 5 * out_area * op.out_channels
    if op.kind in ("permute", "identity", "slice"):
        return 0
    return out_area * op.out_channels  # relu, act, scale, se's multiply


def op_fixed_flops(op: Op, in_hw: tuple[int, int]) -> int:
    """FLOPs an op spends whatever region it writes: a squeeze-and-excitation's mean
    over its whole input map and its two 1x1 convs (with biases), whether it runs
    whole (``se``) or as a scale vector made once (``sescale``); 0 for others."""
    if op.kind not in GLOBAL | SCALED:
        return 0
    c, h = op.in_channels, op.hidden
    return c * in_hw[0] * in_hw[1] + 2 * (2 * c * h) + h + c


# ---- traces of units and unit ranges --------------------------------------------------------


@dataclass(frozen=True)
class OpStep:
    """One op of a trace: read ``need`` from a map of size ``in_hw``, pad, write ``out``."""

    op: Op
    in_hw: tuple[int, int]
    need: Region
    pad: Padding
    out: Region
    given: bool = False
    """A ``sescale`` whose scale vector comes with the work: its mean and 1x1 convs are
    not computed here (whoever made the vector counts them)."""

    @property
    def flops(self) -> int:
        fixed = 0 if self.given else op_fixed_flops(self.op, self.in_hw)
        return op_flops(self.op, self.out.area) + fixed


@dataclass(frozen=True)
class UnitTrace:
    """How one unit produces ``out`` from the slab ``need`` of its input map."""

    unit: Unit
    need: Region
    """The input slab this unit consumes (hull of what main path and shortcut read)."""
    out: Region
    main: tuple[OpStep, ...]
    shortcut: tuple[OpStep, ...] | None
    """None for non-residual units; () for an identity shortcut (reads ``out`` itself)."""
    post: tuple[OpStep, ...]
    more: tuple[tuple[OpStep, ...], ...] = ()
    """A concatenation's branches after ``main`` and ``shortcut``."""

    @property
    def steps(self) -> tuple[OpStep, ...]:
        more = tuple(s for b in self.more for s in b)
        return self.main + (self.shortcut or ()) + more + self.post

    @property
    def flops(self) -> int:
        f = sum(s.flops for s in self.steps)
        if self.unit.is_block and self.unit.merge == "add":
            f += self.out.area * self.unit.out_shape[0]  # the residual add
        return f


def _trace_chain(
    ops: Sequence[Op], in_hw: tuple[int, int], out: Region, given: bool = False
) -> tuple[OpStep, ...]:
    """Trace a sequence of ops backwards from its output region (``given``: as in
    :func:`op_input`)."""
    hws = [in_hw]
    for op in ops:
        hws.append(op_out_hw(op, hws[-1]))
    steps: list[OpStep] = []
    region = out
    for op, hw in zip(reversed(ops), reversed(hws[:-1]), strict=True):
        need, pad = op_input(op, region, hw, given)
        steps.append(OpStep(op, hw, need, pad, region, given and op.kind in SCALED))
        region = need
    steps.reverse()
    return tuple(steps)


def trace_unit(unit: Unit, out: Region, first: bool = True) -> UnitTrace:
    """``first``: the unit starts its range, so a scale vector it needs (``sescale``)
    comes with the work; deeper in a range a tile makes it from the whole map."""
    _c, h, w = unit.out_shape
    if not full_region(h, w).contains(out) or out.area == 0:
        raise ValueError(f"unit {unit.name}: output region {out} outside its {h}x{w} map")
    in_hw = (unit.in_shape[1], unit.in_shape[2])
    post = _trace_chain(unit.post, (h, w), out, first)
    pre_post = post[0].need if post else out
    main = _trace_chain(unit.main, in_hw, pre_post, first)
    need = main[0].need if main else pre_post
    shortcut: tuple[OpStep, ...] | None = None
    more: list[tuple[OpStep, ...]] = []
    if unit.shortcut is not None:
        shortcut = _trace_chain(unit.shortcut, in_hw, pre_post, first)
        need = need.hull(shortcut[0].need if shortcut else pre_post)
        for branch in unit.more:
            steps = _trace_chain(branch, in_hw, pre_post, first)
            more.append(steps)
            need = need.hull(steps[0].need if steps else pre_post)
    return UnitTrace(unit, need, out, main, shortcut, post, tuple(more))


@dataclass(frozen=True)
class Trace:
    """A fused unit range ``[start, stop)`` producing ``out`` at boundary ``stop``."""

    start: int
    stop: int
    units: tuple[UnitTrace, ...]

    @property
    def need(self) -> Region:
        """The input slab (at boundary ``start``) this range consumes."""
        return self.units[0].need

    @property
    def out(self) -> Region:
        return self.units[-1].out

    @property
    def flops(self) -> int:
        return sum(u.flops for u in self.units)


def check_range(spec: ModelSpec, start: int, stop: int) -> None:
    if not 0 <= start < stop <= spec.n_units:
        raise ValueError(f"unit range [{start}, {stop}) is not inside 0..{spec.n_units} or empty")


def trace(spec: ModelSpec, start: int, stop: int, out: Region) -> Trace:
    """Trace units ``start .. stop-1`` backwards from the output region ``out``."""
    check_range(spec, start, stop)
    traces: list[UnitTrace] = []
    region = out
    for unit in reversed(spec.units[start:stop]):
        t = trace_unit(unit, region, unit.index == start)
        traces.append(t)
        region = t.need
    traces.reverse()
    return Trace(start, stop, tuple(traces))


_STRIPS: dict[tuple[object, ...], Trace] = {}


def strip_trace(spec: ModelSpec, start: int, stop: int, rows: tuple[int, int]) -> Trace:
    """:func:`trace` of full-width output ``rows`` of units ``[start, stop)``, kept by
    (model, input size, units, rows): a cached plan's strip jobs are the same few strips
    request after request, and each peer checks and prices the ones it gets (a VGG-16
    job's stages took ~0.25 ms of CPU each to trace, several ms of a 0.13-core peer)."""
    key = (spec.name, spec.input_shape, start, stop, rows)
    got = _STRIPS.get(key)
    if got is None:
        _, _, w = spec.shape_at(stop)
        got = trace(spec, start, stop, Region(Span(*rows), Span(0, w)))
        if len(_STRIPS) > 10_000:
            _STRIPS.clear()
        _STRIPS[key] = got
    return got


def input_region(spec: ModelSpec, start: int, stop: int, out: Region) -> Region:
    return trace(spec, start, stop, out).need


def region_flops(spec: ModelSpec, start: int, stop: int, out: Region) -> int:
    """FLOPs to compute ``out`` at boundary ``stop`` from the map at boundary ``start``."""
    return trace(spec, start, stop, out).flops


def full_flops(spec: ModelSpec, start: int, stop: int) -> int:
    _, h, w = spec.shape_at(stop)
    return region_flops(spec, start, stop, full_region(h, w))


def head_flops(spec: ModelSpec) -> int:
    """FLOPs of the head: adaptive average pool plus the linear layers."""
    c, h, w = spec.head.in_shape
    pool = c * max(h * w, spec.head.pool_size[0] * spec.head.pool_size[1])
    return pool + sum(2 * a * b + b for a, b in spec.head.linear)


def fold_flops(spec: ModelSpec) -> int:
    """FLOPs of the head's first linear layer when it can be folded into the last map's
    row strips, else 0.

    VGG's head pools the last map to its own size (7x7 at 224 pixels: an identity)
    and flattens it straight into fc1 (25088 -> 4096, 103M weights, most of the head's
    time). fc1 is linear, so each peer can multiply its own rows of the last map by
    the matching columns of fc1 and send 4096 partial sums instead of its rows; the
    auctioneer adds them up (``Plan.fold_head``). The bias stays with the auctioneer."""
    head = spec.head
    c, h, w = head.in_shape
    if head.kind != "vgg" or head.pool_size != (h, w) or head.linear[0][0] != c * h * w:
        return 0
    return 2 * head.linear[0][0] * head.linear[0][1]


def fold_bytes(spec: ModelSpec) -> int:
    """Bytes of one folded strip's answer: the first linear layer's partial sums."""
    return spec.head.linear[0][1] * FLOAT32_BYTES


def total_flops(spec: ModelSpec) -> int:
    return full_flops(spec, 0, spec.n_units) + head_flops(spec)


def region_bytes(channels: int, region: Region, itemsize: int = FLOAT32_BYTES) -> int:
    return channels * region.area * itemsize


def halo_overhead(spec: ModelSpec, start: int, stop: int, regions: Iterable[Region]) -> float:
    """Extra FLOPs (as a fraction) of computing ``regions`` separately vs unsplit."""
    base = full_flops(spec, start, stop)
    split = sum(region_flops(spec, start, stop, r) for r in regions)
    return split / base - 1.0


def receptive_field(spec: ModelSpec, stop: int) -> tuple[int, int]:
    """Receptive field (rows, cols) of one output pixel at boundary ``stop`` on the input.

    Follows each unit's main path, which dominates a BasicBlock's shortcut; past a
    global op (squeeze-and-excitation, whole or as a scale vector) it is the whole input.
    """
    if any(u.is_global or u.needs_scale for u in spec.units[:stop]):
        return spec.input_shape[1], spec.input_shape[2]
    rf = [1, 1]
    jump = [1, 1]
    for unit in spec.units[:stop]:
        for op in unit.main:
            if op.window is None:
                continue
            for ax in (0, 1):
                rf[ax] += (op.window.kernel[ax] - 1) * op.window.dilation[ax] * jump[ax]
                jump[ax] *= op.window.stride[ax]
    return rf[0], rf[1]


# ---- partitions -----------------------------------------------------------------------------


def strips(size: int, cuts: Sequence[int]) -> list[Span]:
    """Split ``[0, size)`` at the (sorted, interior) positions ``cuts``."""
    edges = [0, *cuts, size]
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"cuts {list(cuts)} do not split [0, {size}) into non-empty strips")
    return [Span(a, b) for a, b in itertools.pairwise(edges)]


def proportional_strips(size: int, weights: Sequence[float]) -> list[Span]:
    """Strips with sizes proportional to ``weights`` (largest-remainder rounding).

    Zero weights get empty strips; they are dropped, so fewer spans may come back.
    """
    if size <= 0 or not weights or sum(weights) <= 0 or min(weights) < 0:
        raise ValueError(f"cannot split {size} rows by weights {list(weights)}")
    total = sum(weights)
    exact = [size * w / total for w in weights]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in order[: size - sum(sizes)]:
        sizes[i] += 1
    out: list[Span] = []
    pos = 0
    for n in sizes:
        if n:
            out.append(Span(pos, pos + n))
            pos += n
    return out


def grid(height: int, width: int, row_cuts: Sequence[int], col_cuts: Sequence[int]) -> list[Region]:
    """A 2-D grid of tiles, row-major."""
    return [Region(r, c) for r in strips(height, row_cuts) for c in strips(width, col_cuts)]


def row_strips(height: int, width: int, cuts: Sequence[int]) -> list[Region]:
    return [Region(r, Span(0, width)) for r in strips(height, cuts)]


def tiles_cover_exactly(regions: Iterable[Region], height: int, width: int) -> bool:
    """True when ``regions`` cover every element of an ``height x width`` map exactly once."""
    counts = [[0] * width for _ in range(height)]
    for r in regions:
        if not full_region(height, width).contains(r):
            return False
        for y in range(r.rows.start, r.rows.stop):
            row = counts[y]
            for x in range(r.cols.start, r.cols.stop):
                row[x] += 1
    return all(c == 1 for row in counts for c in row)

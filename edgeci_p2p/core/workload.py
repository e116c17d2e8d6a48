"""Fast, memoised input regions and FLOPs of output regions of unit ranges (pure).

The planners evaluate thousands of (unit range, output region) pairs; building a
full :class:`~edgeci_p2p.core.geometry.Trace` for each is too slow for a 100 ms
planning budget. Rows and columns are independent axes, so this module
propagates plain ``(start, stop)`` pairs backwards through precompiled window
parameters and multiplies per-pixel FLOPs, giving exactly what
:func:`~edgeci_p2p.core.geometry.trace` gives (tests check equality).

One backward pass from boundary ``stop`` towards boundary 0 yields the answer for
every range ``[i, stop)`` at once, which is what a DP over cut points wants.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeci_p2p.core.geometry import (
    Region,
    Span,
    op_fixed_flops,
    op_flops,
    op_out_hw,
    trace_unit,
)
from edgeci_p2p.core.units import GLOBAL, SCALED, ModelSpec, Op, Unit

Pair = tuple[int, int]
RegionKey = tuple[int, int, int, int]
"""(row start, row stop, col start, col stop)."""


@dataclass(frozen=True)
class _OpC:
    """A compiled op: window per axis (None for pointwise) and FLOPs per output pixel."""

    win: tuple[tuple[int, int, int, int, int], tuple[int, int, int, int, int]] | None
    """Per axis ``(k, s, p, d, in_size)``."""
    per_pixel: int
    whole: tuple[int, int] | None = None
    """A global op (squeeze-and-excitation): the input (rows, cols) it reads whatever
    it writes."""
    fixed: int = 0
    """FLOPs it spends whatever it writes (:func:`~edgeci_p2p.core.geometry.op_fixed_flops`)."""
    out_w: int = 0
    """The width of the map it writes (ceil-mode pools included)."""
    scaled: tuple[int, int] | None = None
    """A ``sescale``: as ``whole`` unless its scale vector comes with the work (the
    unit starts the range), then pointwise with no fixed FLOPs."""


def _compile_chain(ops: tuple[Op, ...], in_hw: tuple[int, int]) -> tuple[_OpC, ...]:
    out: list[_OpC] = []
    hw = in_hw
    for op in ops:
        w = op.window
        win = None
        if w is not None:
            win = (
                (w.kernel[0], w.stride[0], w.padding[0], w.dilation[0], hw[0]),
                (w.kernel[1], w.stride[1], w.padding[1], w.dilation[1], hw[1]),
            )
        whole = hw if op.kind in GLOBAL else None
        scaled = hw if op.kind in SCALED else None
        out_hw = op_out_hw(op, hw)
        fixed = op_fixed_flops(op, hw)
        out.append(_OpC(win, op_flops(op, 1), whole, fixed, out_hw[1], scaled))
        hw = out_hw
    return tuple(out)


def _need(span: Pair, k: int, s: int, p: int, d: int, size: int) -> Pair:
    lo = span[0] * s - p
    hi = (span[1] - 1) * s - p + d * (k - 1)
    if lo > size - 1 or hi < 0:
        raise ValueError(f"output span {span} reads no real input (input size {size})")
    return (lo if lo > 0 else 0, (hi if hi < size - 1 else size - 1) + 1)


def _whole(c: _OpC, given: bool) -> tuple[int, int] | None:
    """The input a global op reads whatever it writes (None if it is not one here)."""
    return c.whole if c.whole is not None or given else c.scaled


def _back(
    chain: tuple[_OpC, ...], rows: Pair, cols: Pair, given: bool = False
) -> tuple[Pair, Pair, int]:
    """Input spans a chain reads for output ``rows x cols``, and the chain's FLOPs
    (``given``: a scale vector comes with the work)."""
    flops = 0
    for c in reversed(chain):
        whole = _whole(c, given)
        flops += c.per_pixel * (rows[1] - rows[0]) * (cols[1] - cols[0])
        flops += c.fixed if whole is not None else 0
        if whole is not None:
            rows, cols = (0, whole[0]), (0, whole[1])
        elif c.win is not None:
            rows = _need(rows, *c.win[0])
            cols = _need(cols, *c.win[1])
    return rows, cols, flops


@dataclass(frozen=True)
class _UnitC:
    kind: str
    main: tuple[_OpC, ...]
    shortcut: tuple[_OpC, ...] | None
    post: tuple[_OpC, ...]
    add_per_pixel: int
    more: tuple[tuple[_OpC, ...], ...] = ()
    scaled: bool = False
    """The unit needs a scale vector (its cost differs as the first of a range)."""

    @property
    def branches(self) -> tuple[tuple[_OpC, ...], ...]:
        """The chains besides ``main`` that read the unit's input."""
        return () if self.shortcut is None else (self.shortcut, *self.more)


def _compile_unit(u: Unit) -> _UnitC:
    in_hw = (u.in_shape[1], u.in_shape[2])
    post_hw = (u.out_shape[1], u.out_shape[2])
    return _UnitC(
        kind=u.kind,
        main=_compile_chain(u.main, in_hw),
        shortcut=None if u.shortcut is None else _compile_chain(u.shortcut, in_hw),
        post=_compile_chain(u.post, post_hw),
        add_per_pixel=u.out_shape[0] if u.is_block and u.merge == "add" else 0,
        more=tuple(_compile_chain(b, in_hw) for b in u.more),
        scaled=u.needs_scale,
    )


def _unit_back(uc: _UnitC, rows: Pair, cols: Pair, first: bool = False) -> tuple[Pair, Pair, int]:
    """Input spans and FLOPs of one unit (``first``: it starts the range)."""
    area = (rows[1] - rows[0]) * (cols[1] - cols[0])
    r, c, flops = _back(uc.post, rows, cols, first)
    mr, mc, f = _back(uc.main, r, c, first)
    flops += f + uc.add_per_pixel * area
    for branch in uc.branches:
        sr, sc, f = _back(branch, r, c, first)
        flops += f
        mr = (min(mr[0], sr[0]), max(mr[1], sr[1]))
        mc = (min(mc[0], sc[0]), max(mc[1], sc[1]))
    return mr, mc, flops


@dataclass(frozen=True)
class RangeWork:
    """What computing one output region of units ``[start, stop)`` takes."""

    need: RegionKey
    """Input region at boundary ``start``."""
    unit_flops: tuple[tuple[str, int], ...]
    """(unit kind, FLOPs) of each unit, in order."""

    @property
    def flops(self) -> int:
        return sum(f for _, f in self.unit_flops)

    @property
    def need_region(self) -> Region:
        r0, r1, c0, c1 = self.need
        return Region(Span(r0, r1), Span(c0, c1))


class Workload:
    """Memoised region costs of one model spec."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._units = tuple(_compile_unit(u) for u in spec.units)
        # (stop, region) -> per boundary b (stop-1 down to 0): (need at b, kind, flops of unit b)
        self._chains: dict[tuple[int, RegionKey], list[tuple[RegionKey, str, int]]] = {}

    def _chain(self, stop: int, out: RegionKey, down_to: int) -> list[tuple[RegionKey, str, int]]:
        key = (stop, out)
        chain = self._chains.get(key)
        if chain is None:
            chain = []
            self._chains[key] = chain
        rows, cols = (out[0], out[1]), (out[2], out[3])
        if chain:
            last = chain[-1][0]
            rows, cols = (last[0], last[1]), (last[2], last[3])
        b = stop - 1 - len(chain)
        while b >= down_to:
            uc = self._units[b]
            rows, cols, f = _unit_back(uc, rows, cols)
            chain.append(((rows[0], rows[1], cols[0], cols[1]), uc.kind, f))
            b -= 1
        return chain

    def work(self, start: int, stop: int, out: RegionKey) -> RangeWork:
        """Input region and per-unit FLOPs for output ``out`` of units ``[start, stop)``."""
        if not 0 <= start < stop <= self.spec.n_units:
            raise ValueError(f"unit range [{start}, {stop}) outside 0..{self.spec.n_units}")
        chain = self._chain(stop, out, start)
        steps = chain[: stop - start]
        uc = self._units[start]
        if uc.scaled:
            # The chain holds unit ``start`` as it is deep in a range; first, its scale
            # vector comes with the work.
            at = steps[-2][0] if len(steps) > 1 else out
            rows, cols, f = _unit_back(uc, (at[0], at[1]), (at[2], at[3]), True)
            steps = [*steps[:-1], ((rows[0], rows[1], cols[0], cols[1]), uc.kind, f)]
        return RangeWork(need=steps[-1][0], unit_flops=tuple((k, f) for _, k, f in reversed(steps)))

    def work_region(self, start: int, stop: int, out: Region) -> RangeWork:
        return self.work(
            start, stop, (out.rows.start, out.rows.stop, out.cols.start, out.cols.stop)
        )


# ---- full-width row strips: separable tables -----------------------------------------------
#
# For a full-width strip, the first input row an op reads depends only on the
# strip's first output row, and the last only on its last (clamping included).
# So the FLOPs of units [i, j) over output rows [a, b) at boundary j split as
# ``HI[i][j][b] - LO[i][j][a]`` per unit kind, and the rows needed at boundary i
# are ``[lo_row[i][j][a], hi_row[i][j][b])``: O(1) per strip after O(n^2 * H)
# precomputation, instead of a trace per strip.


def _lo_in(c: _OpC, p: int) -> int:
    assert c.win is not None
    _k, s, pad, _d, _size = c.win[0]
    lo = p * s - pad
    return lo if lo > 0 else 0


def _hi_in(c: _OpC, q: int) -> int:
    assert c.win is not None
    k, s, pad, d, size = c.win[0]
    hi = (q - 1) * s - pad + d * (k - 1)
    return (hi if hi < size - 1 else size - 1) + 1


@dataclass(frozen=True)
class _UnitRows:
    """One unit's row maps and FLOP halves, indexed by output row boundary 0..H."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    flo: tuple[int, ...]
    fhi: tuple[int, ...]


def _chain_rows(
    chain: tuple[_OpC, ...], p: int, lower: bool, out_w: list[int], given: bool = False
) -> tuple[int, int]:
    """Walk a chain backwards from output row boundary ``p``: (input row, FLOP half)."""
    f = 0
    for c, w in zip(reversed(chain), reversed(out_w), strict=True):
        whole = _whole(c, given)
        # A global op's fixed FLOPs go to the upper half only: they cancel in
        # ``hi[b] - lo[a]`` otherwise, and every non-empty strip pays them once.
        f += c.per_pixel * w * p + (0 if lower or whole is None else c.fixed)
        if whole is not None:
            p = 0 if lower else whole[0]
        elif c.win is not None:
            p = _lo_in(c, p) if lower else _hi_in(c, p)
    return p, f


def _chain_widths(chain: tuple[_OpC, ...], in_w: int) -> list[int]:
    return [c.out_w for c in chain]


def _unit_rows(u: Unit, uc: _UnitC, first: bool = False) -> _UnitRows:
    """``first``: the unit starts the range (a scale vector comes with the work)."""
    h_out, w_out = u.out_shape[1], u.out_shape[2]
    main_w = _chain_widths(uc.main, u.in_shape[2])
    post_w = _chain_widths(uc.post, w_out)
    branch_w = [_chain_widths(b, u.in_shape[2]) for b in uc.branches]
    if uc.main and main_w[-1] != w_out and not uc.post:
        raise AssertionError(f"unit {u.name}: width bookkeeping broke")
    lo: list[int] = []
    hi: list[int] = []
    flo: list[int] = []
    fhi: list[int] = []
    for p in range(h_out + 1):
        for lower, rows, fl in ((True, lo, flo), (False, hi, fhi)):
            # A start row must be < H and a stop row > 0 for the window maps to make
            # sense; the unused end of each table is filled with a clamped value.
            q = min(p, h_out - 1) if lower else max(p, 1)
            r, f = _chain_rows(uc.post, q, lower, post_w, first)
            m, fm = _chain_rows(uc.main, r, lower, main_w, first) if uc.main else (r, 0)
            f += fm + uc.add_per_pixel * w_out * q
            for branch, bw in zip(uc.branches, branch_w, strict=True):
                s, fs = _chain_rows(branch, r, lower, bw, first) if branch else (r, 0)
                f += fs
                m = min(m, s) if lower else max(m, s)
            rows.append(m)
            fl.append(f)
    # Clamped entries above are only placeholders; the exact values at p = H (start)
    # and p = 0 (stop) are never used for non-empty strips.
    return _UnitRows(tuple(lo), tuple(hi), tuple(flo), tuple(fhi))


class StripTable:
    """O(1) costs of full-width row strips ``[a, b)`` of unit ranges ``[i, j)``."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        compiled = tuple(_compile_unit(u) for u in spec.units)
        # The tables assume every op of a full-width strip reads and writes full rows.
        # A floor-mode window that drops trailing columns (odd widths) breaks that; such
        # models fall back to exact per-strip traces (slower, same answers).
        self.separable = all(_full_width_closed(u) for u in spec.units)
        self._work = Workload(spec)
        self._rows = tuple(_unit_rows(u, uc) for u, uc in zip(spec.units, compiled, strict=True))
        # Units that need a scale vector cost less as the first of a range.
        self._first_rows = tuple(
            _unit_rows(u, uc, True) if uc.scaled else r
            for u, uc, r in zip(spec.units, compiled, self._rows, strict=True)
        )
        self.kinds: tuple[str, ...] = tuple(dict.fromkeys(u.kind for u in spec.units))
        self._kind_of = tuple(self.kinds.index(u.kind) for u in spec.units)
        # (i, j) -> (lo_row, hi_row, per-kind flo, per-kind fhi), each indexed by row 0..H_j
        self._counts: dict[tuple[int, int], list[int]] = {}
        self._tab: dict[
            tuple[int, int], tuple[list[int], list[int], list[list[int]], list[list[int]]]
        ] = {}

    def _table(
        self, i: int, j: int
    ) -> tuple[list[int], list[int], list[list[int]], list[list[int]]]:
        t = self._tab.get((i, j))
        if t is not None:
            return t
        h = self.spec.shape_at(j)[1]
        nk = len(self.kinds)
        if j == i:
            ident = list(range(h + 1))
            t = (
                ident,
                ident,
                [[0] * (h + 1) for _ in range(nk)],
                [[0] * (h + 1) for _ in range(nk)],
            )
        else:
            ur = self._first_rows[j - 1] if j - 1 == i else self._rows[j - 1]
            k = self._kind_of[j - 1]
            plo, phi, pflo, pfhi = self._table(i, j - 1)
            lo = [plo[x] for x in ur.lo]
            hi = [phi[x] for x in ur.hi]
            flo = [[pf[x] for x in ur.lo] for pf in pflo]
            fhi = [[pf[x] for x in ur.hi] for pf in pfhi]
            flo[k] = [a + b for a, b in zip(flo[k], ur.flo, strict=True)]
            fhi[k] = [a + b for a, b in zip(fhi[k], ur.fhi, strict=True)]
            t = (lo, hi, flo, fhi)
        self._tab[(i, j)] = t
        return t

    def need_rows(self, i: int, j: int, a: int, b: int) -> tuple[int, int]:
        """Input rows at boundary ``i`` for output rows ``[a, b)`` at boundary ``j``."""
        if not self.separable:
            need = self._work.work(i, j, (a, b, 0, self.spec.shape_at(j)[2])).need
            return need[0], need[1]
        lo, hi, _, _ = self._table(i, j)
        return lo[a], hi[b]

    def flops(self, i: int, j: int, a: int, b: int) -> list[int]:
        """FLOPs per kind (``self.kinds`` order) of output rows ``[a, b)`` of units ``[i, j)``."""
        if not self.separable:
            out = [0] * len(self.kinds)
            w = self._work.work(i, j, (a, b, 0, self.spec.shape_at(j)[2]))
            for kind, f in w.unit_flops:
                out[self.kinds.index(kind)] += f
            return out
        _, _, flo, fhi = self._table(i, j)
        return [fh[b] - fl[a] for fl, fh in zip(flo, fhi, strict=True)]

    def unit_counts(self, i: int, j: int) -> list[int]:
        """Number of units of each kind in ``[i, j)`` (each pays its per-call overhead)."""
        got = self._counts.get((i, j))
        if got is None:
            got = [0] * len(self.kinds)
            for u in range(i, j):
                got[self._kind_of[u]] += 1
            self._counts[(i, j)] = got
        return got


def _full_width_closed(u: Unit) -> bool:
    """Whether a full-width output of ``u`` has every op write full rows and the unit
    read full input rows (a floor-mode window may drop trailing columns)."""
    _, _, w = u.out_shape
    ut = trace_unit(u, Region(Span(0, 1), Span(0, w)))
    if ut.need.cols != Span(0, u.in_shape[2]):
        return False
    return all(step.out.cols == Span(0, op_out_hw(step.op, step.in_hw)[1]) for step in ut.steps)

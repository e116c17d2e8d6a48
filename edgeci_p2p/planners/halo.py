"""Strategy ``edgeci-halo``: DPFL's fused blocks, plus strip-resident segments with direct
peer-to-peer halo exchange (pure).

DPFL (:mod:`.dpfl`) gathers every fused block's output on the auctioneer and
scatters the next block's input slabs from there: a star. Here each boundary is
either a *gather* boundary (as DPFL) or a *halo* boundary: the strips stay on
their devices and only the rows the next stage needs move, directly between
peers (:func:`edgeci_p2p.core.plan.row_moves`).

The planner is a DP over unit boundaries with two states per boundary ``b``: the
map is whole on the auctioneer (G) or resident as strips on the devices of a
fixed ordered set ``D`` (R). A block ``[i, j)`` can go G->G (a gather block),
G->R (the first stage of a segment: slabs scattered, output kept), R->R (a
middle stage: halo exchange, compute) or R->G (the last stage of a segment:
exchange, compute, gather). ``D`` keeps its order through a segment, so
neighbouring strips stay neighbours and an exchange is mostly two small row
moves per peer. Fusing several units into one stage trades halo recomputation
against fewer exchanges; the DP chooses stage extents and boundary kinds by
predicted cost.

Inside the DP the cost of a block is a barrier approximation (every device
starts the block together):

* strip heights finish together: :func:`edgeci_p2p.planners.dpfl.equal_finish_rows`
  on each device's affine model, without the scatter terms when the input is
  resident and without the gather terms when the output stays; with a resident
  input the held strips scaled to the output map (only halos travel) compete;
* G->G blocks cost as in DPFL (:meth:`Context.single_cost`, :meth:`Context.strips_cost`)
  over singles and the equal-finish split of ``D``;
* a resident input pays the row moves from the strips the predecessor state left
  (the R state keeps the layout of its best predecessor), timed on the
  testbed's medium as the simulator times them (one queue on a shared medium;
  per-device uplink and downlink queues on switched links).

Every candidate ``D`` (:func:`device_orders`: the order of DPFL's longest
multi-strip stage, which DPFL's own order search chose, then all devices fastest
first, all with the auctioneer on top, then smaller rank prefixes, so devices too
slow to help are dropped; at most :data:`MAX_DEVICE_SETS`) gives a plan, which is
simulated exactly (:func:`edgeci_p2p.core.sim.simulate`: no barriers inside a
segment). As in DPFL, no fixed rule picks the best order (scatter and gather
order, which strips sit on the map's borders, which devices are neighbours), so
the best :data:`ORDER_SEARCH_STARTS` plans get a local search over ``D`` with their
stages kept (:func:`search_order`: swap two devices, move one or bring one in,
re-lay the strips as the DP would, simulate; go to the best neighbour while it
improves); a new best order gets a DP run of its own. The best plan is refined on
the simulator (:func:`refine_strips`: strip edges moved one grid step at a time,
in all stages of a segment at once or in one stage) and compared with DPFL's own
gather-only plan on the same context; the faster is returned, so ``edgeci-halo``
never simulates slower than ``edgeci``. Its ``predicted`` is the simulator's
number; ``notes`` record both predictions and which won.

Planning takes 0.27-0.6 s for VGG-16 and ResNet-34 on the shipped testbeds (about
half of it DPFL's own DP; ``docs/device-orders.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan, Stage, Transfer, segments
from edgeci_p2p.core.sim import Task, run_stage, simulate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.context import Affine, Context
from edgeci_p2p.planners.dpfl import (
    DEFAULT_RESOLUTION,
    compact_strips,
    equal_finish_rows,
    grid_step,
    neighbour_orders,
    plan_edgeci,
    round_to_grid,
)

MAX_DEVICE_SETS = 4
"""At most this many device sets get a DP run (the most promising first; planning time)."""

ORDER_SEARCH_STARTS = 2
"""The order search (:func:`search_order`) starts from the plans of this many of them
(the best first)."""

MAX_ORDER_SIMS = 60
"""At most this many simulations for each order search (planning time)."""

Layout = tuple[tuple[int, ...], tuple[int, ...]]
"""Strip edges (``len(devices) + 1`` rows) and the device of each strip, top to bottom."""


@dataclass(frozen=True)
class _Block:
    """One stage the DP chose: units ``[i, j)`` split by ``layout``, output ``transfer``."""

    i: int
    j: int
    layout: Layout
    transfer: Transfer


@dataclass(frozen=True)
class _State:
    """Best way found to reach a boundary in one state (G: gathered, R: resident)."""

    cost: float
    prev: _State | None
    block: _Block | None

    @property
    def held(self) -> Layout:
        """Strips of the map at this boundary (R states)."""
        assert self.block is not None
        return self.block.layout


class _HaloDP:
    """The two-state DP of the module docstring for one ordered device set ``D``."""

    def __init__(self, ctx: Context, devices: Sequence[int], resolution: int) -> None:
        self.ctx = ctx
        self.tb: Testbed = ctx.testbed
        self.devices = tuple(devices)
        self.resolution = resolution
        n_dev = ctx.n_dev
        self.bw = [self.tb.link(d).bandwidth for d in range(n_dev)]
        self.rtt = [self.tb.link(d).rtt for d in range(n_dev)]
        self.hop = [dev.hop_s for dev in self.tb.devices]
        self.row_bytes = [
            c * w * ctx.spec.wire_itemsize(b)
            for b, (c, _, w) in enumerate(ctx.spec.shape_at(b) for b in range(ctx.n + 1))
        ]
        self._layouts: dict[tuple[int, int, bool, bool], Layout | None] = {}

    # ---- strip heights ----------------------------------------------------------------------

    def layout(self, i: int, j: int, in_res: bool, out_res: bool) -> Layout | None:
        """Equal-finish strips of block ``[i, j)`` over ``D`` (devices whose share is under
        half a grid step dropped), on the row grid; None if fewer than two remain."""
        key = (i, j, in_res, out_res)
        if key in self._layouts:
            return self._layouts[key]
        ctx = self.ctx
        height = ctx.spec.shape_at(j)[1]
        step = grid_step(height, self.resolution)
        devs = list(self.devices)
        got: Layout | None = None
        while len(devs) >= 2 and len(devs) * step <= height:
            models = [(d, _strip_terms(ctx.affine(d, i, j), in_res, out_res)) for d in devs]
            rows = equal_finish_rows(models, ctx.aid, height)
            if rows is None:
                rows = [height / max(af.c1, 1e-18) for _, af in models]
                total = sum(rows)
                rows = [height * r / total for r in rows]
            worst = min(range(len(devs)), key=lambda k: rows[k])
            if rows[worst] < step / 2:
                del devs[worst]
                continue
            edges, kept = compact_strips(round_to_grid(rows, height, step), devs)
            if len(kept) >= 2:
                got = (edges, kept)
            break
        self._layouts[key] = got
        return got

    # ---- block costs (barrier approximation) --------------------------------------------------

    def exchange(self, i: int, j: int, held: Layout, lay: Layout) -> list[float]:
        """When each strip of ``lay`` has its input rows at boundary ``i``, from time 0."""
        table = self.ctx.table
        row_b = self.row_bytes[i]
        shared = self.tb.shared_medium
        moves: list[tuple[int, int, float]] = []  # src, dst, seconds
        h_edges, h_devs = held
        edges, devs = lay
        for a, b, dq in zip(edges, edges[1:], devs, strict=False):
            lo, hi = table.need_rows(i, j, a, b)
            for pa, pb, dp in zip(h_edges, h_edges[1:], h_devs, strict=False):
                if dp == dq:
                    continue
                n = min(hi, pb) - max(lo, pa)
                if n > 0:
                    moves.append((dp, dq, n * row_b / min(self.bw[dp], self.bw[dq])))
        if not moves:
            return [0.0] * len(devs)
        lat = [0.0] * self.ctx.n_dev
        for s, d, _ in moves:
            lat[d] = max(lat[d], max(self.rtt[s], self.rtt[d]) / 2 + self.hop[s] + self.hop[d])
        if shared:
            total = sum(t for _, _, t in moves)
            return [total + lat[d] if any(m[1] == d for m in moves) else 0.0 for d in devs]
        up = [0.0] * self.ctx.n_dev
        down = [0.0] * self.ctx.n_dev
        for s, d, t in moves:
            up[s] += t
            down[d] += t
        out = []
        for d in devs:
            srcs = [s for s, dd, _ in moves if dd == d]
            out.append(max([down[d], *(up[s] for s in srcs)]) + lat[d] if srcs else 0.0)
        return out

    def cost(self, i: int, j: int, held: Layout | None, out_res: bool) -> tuple[float, Layout]:
        """Predicted duration of block ``[i, j)`` over ``D`` and its strips (inf if none).

        With a resident input two layouts compete: the equal-finish one, and the held
        strips scaled to the output map (no rows change hands, only halos travel)."""
        lay = self.layout(i, j, held is not None, out_res)
        best: tuple[float, Layout] = (float("inf"), ((), ()))
        if lay is not None:
            best = (self._cost(i, j, held, out_res, lay), lay)
        if held is not None:
            kept = self._aligned(held, i, j)
            if kept is not None and kept != lay:
                c = self._cost(i, j, held, out_res, kept)
                if c < best[0]:
                    best = (c, kept)
        return best

    def _aligned(self, held: Layout, i: int, j: int) -> Layout | None:
        """``held`` (strips at boundary ``i``) scaled to the map at boundary ``j``."""
        h_in = self.ctx.spec.shape_at(i)[1]
        h_out = self.ctx.spec.shape_at(j)[1]
        step = grid_step(h_out, self.resolution)
        edges, devs = held
        rows = [(b - a) * h_out / h_in for a, b in pairwise(edges)]
        out = compact_strips(round_to_grid(rows, h_out, step), devs)
        return out if len(out[1]) >= 2 else None

    def _cost(self, i: int, j: int, held: Layout | None, out_res: bool, lay: Layout) -> float:
        ctx = self.ctx
        edges, devs = lay
        tasks = []
        for a, b, d in zip(edges, edges[1:], devs, strict=False):
            t = ctx.strip_task(d, i, j, a, b)
            in_b = 0 if held is not None else t.in_bytes
            tasks.append(Task(d, in_b, t.seconds, 0 if out_res else t.out_bytes))
        if held is None:
            return run_stage(tasks, self.tb)
        ready = self.exchange(i, j, held, lay)
        if out_res:
            return max(r + t.seconds for r, t in zip(ready, tasks, strict=True))
        return run_stage(tasks, self.tb, max(ready))

    def gather_block(self, i: int, j: int) -> tuple[float, Layout]:
        """DPFL's kind of block, costed over singles and the equal-finish split of ``D``."""
        ctx = self.ctx
        h = ctx.spec.shape_at(j)[1]
        best = min((ctx.single_cost(d, i, j), d) for d in range(ctx.n_dev))
        out: tuple[float, Layout] = (best[0], ((0, h), (best[1],)))
        lay = self.layout(i, j, False, False)
        if lay is not None:
            c = ctx.strips_cost(i, j, *lay)
            if c < out[0]:
                out = (c, lay)
        return out

    # ---- the DP ---------------------------------------------------------------------------------

    def run(self) -> list[_Block] | None:
        ctx = self.ctx
        n = ctx.n
        inf = float("inf")
        gath: list[_State | None] = [_State(0.0, None, None)] + [None] * n
        res: list[_State | None] = [None] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j - 1, -1, -1):
                lb = ctx.lower_bound(i, j)
                g, r = gath[i], res[i]
                gj, rj = gath[j], res[j]
                best_g = gj.cost if gj is not None else inf
                best_r = rj.cost if rj is not None else inf
                for src, held in ((g, None), (r, r.held if r is not None else None)):
                    if src is None:
                        continue
                    base = src.cost
                    if base + lb < best_g:
                        if held is None:
                            c, lay = self.gather_block(i, j)
                        else:
                            c, lay = self.cost(i, j, held, False)
                        if base + c < best_g:
                            best_g = base + c
                            gath[j] = _State(best_g, src, _Block(i, j, lay, "gather"))
                    # No strips stay resident at a synchronisation point, and no
                    # segment starts at one: the auctioneer makes its scale vectors.
                    sync = j < n and ctx.spec.units[j].needs_scale
                    sync = sync or (held is None and ctx.spec.units[i].needs_scale)
                    if j < n and not sync and base + lb < best_r:
                        c, lay = self.cost(i, j, held, True)
                        if base + c < best_r:
                            best_r = base + c
                            res[j] = _State(best_r, src, _Block(i, j, lay, "halo"))
        end = gath[n]
        if end is None:
            return None
        blocks: list[_Block] = []
        state: _State | None = end
        while state is not None and state.block is not None:
            blocks.append(state.block)
            state = state.prev
        blocks.reverse()
        return blocks


def _strip_terms(af: Affine, in_res: bool, out_res: bool) -> Affine:
    """``af`` without the scatter (resident input) and gather (resident output) terms."""
    if not in_res and not out_res:
        return af
    hops = (0 if in_res else 1) + (0 if out_res else 1)
    return replace(
        af,
        x1=0.0 if in_res else af.x1,
        x0=0.0 if in_res else af.x0,
        y1=0.0 if out_res else af.y1,
        y0=0.0 if out_res else af.y0,
        lat=af.lat * hops / 2,
        back=af.back if not out_res else 0.0,
    )


def compute_rank(ctx: Context) -> list[int]:
    """Devices fastest first (by the time of one GFLOP of convolution)."""
    tb = ctx.testbed
    return sorted(range(ctx.n_dev), key=lambda d: (tb.devices[d].compute.seconds("conv", 1e9), d))


def device_orders(ctx: Context, gather_only: Plan | None = None) -> list[tuple[int, ...]]:
    """Candidate ordered device sets for halo segments, most promising first: the device
    order of ``gather_only``'s longest multi-strip stage (DPFL's order search chose it
    for scatters and gathers like a segment's), then the rank prefixes (fastest first)
    from all devices down to two, each in rank order, then the whole set with the
    auctioneer on top (it pays no scatter, so it can start at once)."""
    ranked = compute_rank(ctx)
    out = [tuple(ranked[:k]) for k in range(ctx.n_dev, 1, -1)]
    if ranked[0] != ctx.aid:
        out.insert(1, (ctx.aid, *(d for d in ranked if d != ctx.aid)))
    if gather_only is not None:
        split = [st for st in gather_only.stages if len(st.parts) >= 2]
        if split:
            longest = max(split, key=lambda st: _stage_seconds(ctx, st))
            order = tuple(p.device for p in longest.parts)
            out = [order, *(o for o in out if o != order)]
    return out


def _stage_seconds(ctx: Context, st: Stage) -> float:
    return ctx.strips_cost(st.start, st.stop, _edges(ctx.spec, st), [p.device for p in st.parts])


def _relaid(ctx: Context, blocks: Sequence[_Block], dp: _HaloDP) -> list[_Block] | None:
    """``blocks`` (the same stages and boundary kinds) with the strips of ``dp``'s device
    order, as its DP would lay them out (None if a resident stage has no layout)."""
    out: list[_Block] = []
    held: Layout | None = None
    for b in blocks:
        out_res = b.transfer == "halo"
        if held is None and not out_res:
            lay = b.layout if len(b.layout[1]) == 1 else dp.gather_block(b.i, b.j)[1]
        else:
            cost, lay = dp.cost(b.i, b.j, held, out_res)
            if cost == float("inf"):
                return None
        out.append(_Block(b.i, b.j, lay, b.transfer))
        held = lay if out_res else None
    return out


def search_order(
    ctx: Context,
    blocks: Sequence[_Block],
    devices: tuple[int, ...],
    latency: float,
    resolution: int,
    max_sims: int = MAX_ORDER_SIMS,
) -> tuple[float, list[_Block], tuple[int, ...]]:
    """Local search over the device order of a halo plan with its stages kept: swap two
    devices, move one, or bring in the fastest unused one (:func:`~.dpfl.neighbour_orders`),
    the strips re-laid as the DP would, each simulated; go to the best neighbour while
    it improves, within ``max_sims`` simulations."""
    ranked = compute_rank(ctx)
    cur = (latency, list(blocks), devices)
    tried = {devices}
    sims = 0
    while sims < max_sims:
        nxt = cur
        for order in neighbour_orders(cur[2], ranked):
            if order in tried or sims >= max_sims:
                continue
            tried.add(order)
            relaid = _relaid(ctx, cur[1], _HaloDP(ctx, order, resolution))
            if relaid is None:
                continue
            sims += 1
            lat = simulate(_to_plan(ctx, relaid), ctx.spec, ctx.testbed, ctx.work, False).latency
            if lat < nxt[0] * (1 - 1e-12):
                nxt = (lat, relaid, order)
        if nxt is cur:
            break
        cur = nxt
    return cur


def _to_plan(ctx: Context, blocks: Sequence[_Block]) -> Plan:
    stages: list[Stage] = []
    for b in blocks:
        edges, devs = b.layout
        st = (
            ctx.single_stage(b.i, b.j, devs[0])
            if len(devs) == 1
            else ctx.strips_stage(b.i, b.j, edges, devs)
        )
        stages.append(replace(st, transfer=b.transfer))
    return ctx.make_plan("edgeci-halo", stages)


def _edges(spec: ModelSpec, st: Stage) -> list[int]:
    return [p.region.rows.start for p in st.parts] + [spec.shape_at(st.stop)[1]]


def _moved(
    ctx: Context, st: Stage, edges: Sequence[int], move: Sequence[int], steps: int, resolution: int
) -> Stage | None:
    """``st`` with inner edges ``move`` shifted by ``steps`` grid steps (None if a strip
    would empty)."""
    h = ctx.spec.shape_at(st.stop)[1]
    delta = steps * grid_step(h, resolution)
    new = list(edges)
    for e in move:
        new[e] += delta
    if any(not new[e - 1] < new[e] < new[e + 1] for e in move):
        return None
    devs = [p.device for p in st.parts]
    return replace(ctx.strips_stage(st.start, st.stop, new, devs), transfer=st.transfer)


def refine_strips(
    plan: Plan, ctx: Context, latency: float, resolution: int, max_evals: int = 80
) -> tuple[Plan, float]:
    """Move strip edges one grid step while the simulated latency drops.

    The DP's barrier costs cannot see how a segment's devices drift apart without
    barriers; the simulator can. Moves: an inner edge (or two neighbouring edges
    together) of every multi-strip stage of a halo segment, the same in all its
    stages at once (keeps the strips aligned, so a device's share of the whole
    segment changes), then in one stage alone. At most ``max_evals`` simulations.
    """
    spec, tb, work = ctx.spec, ctx.testbed, ctx.work
    stages = list(plan.stages)
    best = latency
    evals = 0

    def better(trial: list[Stage]) -> bool:
        nonlocal best, stages, evals
        evals += 1
        lat = simulate(replace(plan, stages=tuple(trial)), spec, tb, work, False).latency
        if lat < best * (1 - 1e-12):
            best, stages = lat, trial
            return True
        return False

    def moves(n_parts: int) -> list[tuple[int, ...]]:
        inner = n_parts - 1
        return [(e,) for e in range(1, inner + 1)] + [(e, e + 1) for e in range(1, inner)]

    groups: list[list[int]] = []
    for first, last in segments(plan):
        ks = [k for k in range(first, last + 1) if len(stages[k].parts) >= 2]
        devs = {tuple(p.device for p in stages[k].parts) for k in ks}
        if last > first and len(ks) >= 2 and len(devs) == 1:
            groups.append(ks)
    groups += [[k] for k, st in enumerate(stages) if len(st.parts) >= 2]
    improved = True
    while improved and evals < max_evals:
        improved = False
        for ks in groups:
            for move in moves(len(stages[ks[0]].parts)):
                for steps in (-1, 1):
                    while evals < max_evals:
                        trial = list(stages)
                        for k in ks:
                            got = _moved(
                                ctx, stages[k], _edges(spec, stages[k]), move, steps, resolution
                            )
                            if got is None:
                                break
                            trial[k] = got
                        else:
                            if better(trial):
                                improved = True
                                continue  # keep going the same way
                        break
    return replace(plan, stages=tuple(stages)), best


def plan_edgeci_halo(
    spec: ModelSpec,
    testbed: Testbed,
    resolution: int = DEFAULT_RESOLUTION,
    ctx: Context | None = None,
) -> Plan:
    """The faster (simulated) of the best halo-DP plan and DPFL's gather-only plan."""
    ctx = ctx or Context(spec, testbed)
    gather_only = plan_edgeci(spec, testbed, resolution, ctx=ctx)
    g_pred = simulate(gather_only, spec, testbed, ctx.work, record=False).latency
    found: list[tuple[float, list[_Block], tuple[int, ...]]] = []
    worse = 0
    for devs in device_orders(ctx, gather_only)[:MAX_DEVICE_SETS]:
        blocks = _HaloDP(ctx, devs, resolution).run()
        worse += bool(found)
        if blocks is not None and any(b.transfer == "halo" for b in blocks):
            lat = simulate(_to_plan(ctx, blocks), spec, testbed, ctx.work, record=False).latency
            if not found or lat < min(f[0] for f in found):
                worse = 0
            found.append((lat, blocks, devs))
        # Fewer devices: once a halo plan is found and two smaller sets in a row do
        # not beat it, smaller ones will not either (planning time).
        if worse >= 2:
            break
    halo: Plan | None = None
    h_pred, devs = float("inf"), ()
    if found:
        found.sort(key=lambda f: f[0])
        best: list[_Block] = []
        for lat, blocks, order in found[:ORDER_SEARCH_STARTS]:
            lat, blocks, order = search_order(ctx, blocks, order, lat, resolution)
            if lat < h_pred:
                h_pred, best, devs = lat, blocks, order
        if devs not in [f[2] for f in found]:
            # The order search kept the stages of the old order: the DP may cut
            # differently for the new one.
            again = _HaloDP(ctx, devs, resolution).run()
            if again is not None and any(b.transfer == "halo" for b in again):
                lat = simulate(_to_plan(ctx, again), spec, testbed, ctx.work, False).latency
                if lat < h_pred:
                    h_pred, best = lat, again
        halo, h_pred = refine_strips(_to_plan(ctx, best), ctx, h_pred, resolution)
    notes: dict[str, object] = {
        "resolution": resolution,
        "gather_predicted": g_pred,
        "halo_predicted": None if halo is None else h_pred,
    }
    if halo is not None and h_pred < g_pred:
        notes |= {"chosen": "halo", "halo_devices": list(devs)}
        return replace(halo, predicted=h_pred, notes=notes)
    notes["chosen"] = "gather"
    return replace(gather_only, strategy="edgeci-halo", predicted=g_pred, notes=notes)

"""DPFL, EdgeCI's planner (strategy ``edgeci``): fused blocks chosen by a bottom-up DP.

``T[0] = 0``, ``T[j] = min over i < j of T[i] + C(i, j)``, filled for j = 1..n
with the argmin kept; backtracking from ``T[n]`` gives the blocks. ``C(i, j)`` is
the exact simulated makespan (:func:`edgeci_p2p.core.sim.run_stage`: scatter of
input slabs with their halo rows, compute with halo recomputation, gather of
output strips, all transfers through the auctioneer's radio) of the best
split of block ``[i, j)`` found as follows:

1. Every device alone is a candidate (no transfer when it is the auctioneer).
2. Candidate ordered device sets (the order is the strip order, top to bottom,
   and the scatter order): every order of every subset for up to
   ``all_orders_upto`` devices; else devices are ranked for the block by their
   time per output row (slab in + compute + strip out) and the candidates are
   the rank prefixes (stopping once two longer prefixes in a row do not help).
3. Strip heights for a set are chosen so that the devices finish together: with
   each device's times affine in its strip height, the largest strip a device
   can finish by makespan ``T`` (after the slabs scattered before it, with the
   gathers queued behind it) is affine in ``T``, so the binary search on ``T``
   collapses to one linear solve. Devices that get a non-positive height would
   only slow the block down: they are dropped and the system re-solved.
4. Heights are rounded to the row grid (``resolution`` strips per map at most),
   the set is costed exactly, and the promising candidates (all of them on
   coarse grids) are refined by moving strip edges one grid step while the
   exact makespan improves. Dropped devices also come back as one-step strips
   for refinement to judge, since rounding on a coarse grid can mislead.
5. The order search. The rank orders of step 2 miss better ones beyond three
   devices: which device's slab goes first, and which strips sit on the map's
   borders (less halo), depend on every device's link and speed and on the
   block's input and output sizes, and rounding on the row grid reorders close
   candidates; no simple rule (fastest or slowest link first, as divisible-load
   theory has it for one direction or the other) picks the best order. So,
   after the DP, the blocks of every plan within :data:`SEARCH_WITHIN` of the
   best one (the best way to the block's start, the block, the best way on from
   its end) get more orders, split and refined as in steps 3-4: with up to
   :data:`SEARCH_ALL_UPTO` devices every order of every subset; beyond, a local
   search (:func:`search_orders`) from the block's :data:`SEARCH_SEEDS` best
   splits (swap two devices, move one, or bring one in; go to the best
   neighbour while it improves). The DP then re-runs over the improved block
   costs.

The DP also skips blocks whose lower bound (all devices computing with no
overhead) cannot beat the best ``T[j]`` found so far.

All of it is O(1) per candidate thanks to the separable strip tables, and the
order search only visits the blocks that can matter, which is what keeps
planning VGG-16 on eight devices under 100 ms (about 80 ms, cold, on a quiet
two-core machine; four devices take 0.15-0.4 s, ``docs/device-orders.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise, permutations

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan, Stage
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.planners.context import Affine, Context

DEFAULT_RESOLUTION = 56
"""At most this many grid rows per map: 224-row maps cut on multiples of 4 rows."""


COARSE_GRID = 12
"""Maps with at most this many grid rows get every candidate refined."""

SEARCH_WITHIN = 0.1
"""The order search (step 5) runs on the blocks of every plan within this fraction
of the best plan the candidate orders give."""

SEARCH_ALL_UPTO = 4
"""With up to this many devices it tries every order of every subset."""

SEARCH_SEEDS = 2
"""Beyond that, the local search (:func:`search_orders`) starts from this many of a
block's best splits (distinct orders)."""


@dataclass(frozen=True)
class BlockChoice:
    """The best found split of one block: strips ``[edges[k], edges[k+1])`` on ``devices[k]``."""

    cost: float
    edges: tuple[int, ...]
    devices: tuple[int, ...]


def grid_step(height: int, resolution: int) -> int:
    return max(1, -(-height // resolution))


def ranked_devices(ctx: Context, i: int, j: int) -> list[int]:
    """Devices by their time per output row of block ``[i, j)`` (fastest first)."""
    return sorted(range(ctx.n_dev), key=lambda d: (ctx.affine(d, i, j).per_row, d))


def candidate_sets(ranked: Sequence[int], all_orders_upto: int = 3) -> list[list[tuple[int, ...]]]:
    """Ordered device sets of two or more, in groups (the orders of one set): every
    order of every subset for up to ``all_orders_upto`` devices, else the prefixes of
    the rank order (the order search then tries more where it can matter)."""
    n = len(ranked)
    if n <= all_orders_upto:
        return [list(permutations(c)) for k in range(2, n + 1) for c in combinations(ranked, k)]
    return [[tuple(ranked[:k])] for k in range(2, n + 1)]


def equal_finish_rows(
    models: Sequence[tuple[int, Affine]], aid: int, height: int
) -> list[float] | None:
    """Strip heights (real) for devices in scatter order so that all finish together.

    Remote device m waits for the slabs sent before it and its own, computes,
    then its strip and those gathered after it go over the radio:
    ``sum_{l<=m} X_l + C_m + sum_{l>=m} Y_l + lat_m + back_m = T``. The auctioneer needs no
    transfer: ``C_a = T``. Heights sum to ``height``. Subtracting consecutive
    remote equations gives ``r_{m+1}`` from ``r_m``, so every height is affine in
    the first remote one and the system solves in O(k). None if degenerate.
    """
    remote = [af for d, af in models if d != aid]
    local = [af for d, af in models if d == aid]
    if not remote:
        return None
    # r_m = p_m * r_1 + q_m for remote devices
    pq: list[tuple[float, float]] = [(1.0, 0.0)]
    for cur, nxt in pairwise(remote):
        denom = nxt.x1 + nxt.c1
        if denom <= 0:
            return None
        dconst = nxt.c0 - cur.c0 + nxt.fixed_wait - cur.fixed_wait + nxt.x0 - cur.y0
        p, q = pq[-1]
        k = cur.c1 + cur.y1
        pq.append((k * p / denom, (k * q - dconst) / denom))
    first = remote[0]
    # T from the first remote equation: T = tp * r_1 + tq
    tp = first.x1 + first.c1
    tq = first.x0 + first.c0 + first.fixed_wait
    for af, (p, q) in zip(remote, pq, strict=True):
        tp += af.y1 * p
        tq += af.y1 * q + af.y0
    sp = sum(p for p, _ in pq)
    sq = sum(q for _, q in pq)
    loc: tuple[float, float] | None = None
    if local:
        af = local[0]
        if af.c1 <= 0:
            return None
        loc = (tp / af.c1, (tq - af.c0) / af.c1)  # r_a from C_a = T
        sp += loc[0]
        sq += loc[1]
    if abs(sp) < 1e-18:
        return None
    r1 = (height - sq) / sp
    it = iter(pq)
    out: list[float] = []
    for d, _ in models:
        p, q = loc if d == aid and loc is not None else next(it)
        out.append(p * r1 + q)
    return out


def round_to_grid(rows: Sequence[float], height: int, step: int) -> list[int]:
    """Edges 0 = e_0 <= ... <= e_k = height from real heights, inner edges on the grid."""
    edges = [0]
    acc = 0.0
    for r in rows[:-1]:
        acc += r
        e = round(acc / step) * step
        edges.append(min(max(e, edges[-1]), height))
    edges.append(height)
    return edges


def compact_strips(
    edges: Sequence[int], devices: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Strip edges and devices without the empty strips (``devices[k]`` holds
    ``[edges[k], edges[k+1])``)."""
    e, d = [edges[0]], []
    for a, b, dev in zip(edges, edges[1:], devices, strict=False):
        if b > a:
            e.append(b)
            d.append(dev)
    return tuple(e), tuple(d)


def refine(
    ctx: Context, i: int, j: int, choice: BlockChoice, step: int, max_passes: int = 50
) -> BlockChoice:
    """Move strip edges by one grid step while the exact makespan drops.

    Moves: one inner edge, or two neighbouring edges together (which slides a
    strip past a neighbour that a single-edge move would have to empty first).
    """
    best = choice
    n_inner = len(best.edges) - 2
    moves = [(e,) for e in range(1, n_inner + 1)] + [(e, e + 1) for e in range(1, n_inner)]
    for _ in range(max_passes):
        improved = False
        for move in moves:
            for delta in (-step, step):
                edges = list(best.edges)
                for e in move:
                    edges[e] += delta
                if any(not edges[e - 1] < edges[e] < edges[e + 1] for e in move):
                    continue
                cost = ctx.strips_cost(i, j, edges, best.devices)
                if cost < best.cost * (1 - 1e-12):
                    best = BlockChoice(cost, tuple(edges), best.devices)
                    improved = True
        if not improved:
            break
    return best


def split_block(
    ctx: Context, i: int, j: int, devices: Sequence[int], step: int
) -> list[BlockChoice]:
    """Equal-finish strips of ``[i, j)`` over ``devices`` (in order), rounded and costed.

    Devices whose equal-finish share is under half a grid step are dropped and
    the rest re-solved; the set with every device kept at one grid step or more
    is returned too, for refinement to judge (rounding can mislead on coarse grids).
    """
    height = ctx.spec.shape_at(j)[1]
    devs = list(devices)
    out: list[BlockChoice] = []
    shape: tuple[tuple[int, ...], tuple[int, ...]] = ((0, height), (devs[0],))
    while len(devs) >= 2:
        models = [(d, ctx.affine(d, i, j)) for d in devs]
        rows = equal_finish_rows(models, ctx.aid, height)
        if rows is None:
            return out
        worst = min(range(len(devs)), key=lambda k: rows[k])
        if rows[worst] < step / 2:
            del devs[worst]  # this device would only slow the block down
            shape = ((0, height), (devs[0],))
            continue
        shape = compact_strips(round_to_grid(rows, height, step), devs)
        if len(shape[1]) >= 2:
            out.append(BlockChoice(ctx.strips_cost(i, j, *shape), *shape))
        break
    if len(shape[1]) < len(devices) and len(devices) * step <= height:
        forced = _with_minimal_strips(shape[0], shape[1], devices, step)
        if forced is not None:
            out.append(BlockChoice(ctx.strips_cost(i, j, forced, devices), forced, tuple(devices)))
    return out


def _with_minimal_strips(
    edges: Sequence[int], kept: Sequence[int], devices: Sequence[int], step: int
) -> tuple[int, ...] | None:
    """Edges that give every device of ``devices`` a strip: the dropped ones get one
    grid step each, taken from the largest strip (refinement then moves them).
    Inner edges stay on the grid (None if a strip would empty)."""
    sizes = dict(zip(kept, (b - a for a, b in pairwise(edges)), strict=True))
    for d in devices:
        if d not in sizes:
            donor = max(sizes, key=lambda x: sizes[x])
            if sizes[donor] < 2 * step:
                return None
            sizes[donor] -= step
            sizes[d] = step
    out = [0]
    for d in devices[:-1]:
        out.append(out[-1] + sizes[d])
    # A donor strip that ended on the map's last row was off the grid by the map's
    # remainder: snap the edges after it back.
    out = [round(e / step) * step for e in out] + [edges[-1]]
    if any(b <= a for a, b in pairwise(out)):
        return None
    return tuple(out)


@dataclass
class BlockSearch:
    """What the candidate search of one block found, kept for the order search."""

    best: BlockChoice
    refined: list[BlockChoice]
    """The refined candidates (the order search starts from the best of them)."""
    tried: set[tuple[int, ...]]
    """Device orders already split."""
    splits: set[tuple[tuple[int, ...], tuple[int, ...]]]
    """Their splits ``(edges, devices)`` (the same split comes from several orders when
    devices are dropped)."""
    ranked: list[int]
    step: int
    coarse: bool


def search_block(
    ctx: Context,
    i: int,
    j: int,
    resolution: int,
    refine_within: float,
    bound: float = float("inf"),
    all_orders_upto: int = 3,
) -> BlockSearch:
    """The cheapest split of block ``[i, j)`` over the candidate orders (step 2).

    Candidates are refined only if within ``refine_within`` of the best so far
    and of ``bound`` (the cost above which the DP could not use this block).
    """
    height = ctx.spec.shape_at(j)[1]
    singles = [BlockChoice(ctx.single_cost(d, i, j), (0, height), (d,)) for d in range(ctx.n_dev)]
    best = min(singles, key=lambda c: c.cost)
    step = grid_step(height, resolution)
    ranked = ranked_devices(ctx, i, j)
    out = BlockSearch(best, [], set(), set(), ranked, step, height // step <= COARSE_GRID)
    if height < 2 or ctx.n_dev < 2:
        return out
    cands: dict[tuple[tuple[int, ...], tuple[int, ...]], BlockChoice] = {}
    prefixes = ctx.n_dev > all_orders_upto
    worse = 0
    last = float("inf")
    for group in candidate_sets(ranked, all_orders_upto):
        out.tried.update(group)
        got = [c for devs in group for c in split_block(ctx, i, j, devs, step)]
        for c in got:
            cands.setdefault((c.edges, c.devices), c)
        if prefixes:
            # Rank prefixes: once two more devices in a row stop helping, the slower
            # ones after them will not help either.
            cost = min((c.cost for c in got), default=float("inf"))
            worse = worse + 1 if cost >= last else 0
            last = min(last, cost)
            if worse >= 2:
                break
    out.splits.update(cands)
    _refine_best(ctx, i, j, cands.values(), out, refine_within, bound)
    return out


def _refine_best(
    ctx: Context,
    i: int,
    j: int,
    cands: Iterable[BlockChoice],
    found: BlockSearch,
    refine_within: float,
    bound: float,
) -> None:
    """Refine ``cands`` from the cheapest while within ``refine_within`` of
    ``found.best`` and of ``bound``; on a coarse grid, where rounding moves strips by
    a large fraction and refining is cheap, refine them all."""
    for c in sorted(cands, key=lambda c: c.cost):
        if not found.coarse and c.cost * (1 - refine_within) > min(found.best.cost, bound):
            break
        r = refine(ctx, i, j, c, found.step)
        found.refined.append(r)
        if r.cost < found.best.cost:
            found.best = r


def neighbour_orders(devices: Sequence[int], ranked: Sequence[int]) -> list[tuple[int, ...]]:
    """Device orders one step from ``devices``: two devices swapped, one device moved to
    another position, or the fastest device of ``ranked`` not in ``devices`` inserted
    anywhere."""
    order = tuple(devices)
    k = len(order)
    out: list[tuple[int, ...]] = []
    for a, b in combinations(range(k), 2):
        swapped = list(order)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        out.append(tuple(swapped))
    for a in range(k):
        rest = order[:a] + order[a + 1 :]
        out += [(*rest[:p], order[a], *rest[p:]) for p in range(k) if p != a]
    unused = [d for d in ranked if d not in order]
    if unused:
        out += [(*order[:p], unused[0], *order[p:]) for p in range(k + 1)]
    return [o for o in dict.fromkeys(out) if o != order]


def search_orders(
    ctx: Context,
    i: int,
    j: int,
    seed: BlockChoice,
    found: BlockSearch,
    refine_within: float,
    bound: float,
) -> BlockChoice:
    """Local search over device orders from ``seed``: split every untried
    :func:`neighbour_orders` order, refine the splits within ``refine_within`` of the
    best and of ``bound`` (all of them on a coarse grid), go to the best split found
    and repeat until no neighbour improves. Orders split here join ``found.tried``."""
    cur = seed
    while True:
        nxt = cur
        for order in neighbour_orders(cur.devices, found.ranked):
            if order in found.tried:
                continue
            found.tried.add(order)
            for c in split_block(ctx, i, j, order, found.step):
                if (c.edges, c.devices) in found.splits:
                    continue
                found.splits.add((c.edges, c.devices))
                if not found.coarse and c.cost * (1 - refine_within) > min(nxt.cost, bound):
                    continue
                r = refine(ctx, i, j, c, found.step)
                if r.cost < nxt.cost * (1 - 1e-12):
                    nxt = r
        if nxt is cur:
            return cur
        cur = nxt


def improve_order(
    ctx: Context,
    i: int,
    j: int,
    found: BlockSearch,
    refine_within: float,
    bound: float = float("inf"),
    search_within: float = SEARCH_WITHIN,
) -> BlockChoice:
    """``found.best``, or better: with up to :data:`SEARCH_ALL_UPTO` devices, the
    best split over every order of every subset; beyond, :func:`search_orders`
    from the :data:`SEARCH_SEEDS` best refined splits (distinct orders) within
    ``search_within`` of it and of ``bound``."""
    if ctx.spec.shape_at(j)[1] < 2:
        return found.best  # a one-row map: no strips
    if ctx.n_dev <= SEARCH_ALL_UPTO:
        devices = range(ctx.n_dev)
        orders = [
            order
            for k in range(2, ctx.n_dev + 1)
            for subset in combinations(devices, k)
            for order in permutations(subset)
            if order not in found.tried
        ]
        found.tried.update(orders)
        cands = {
            (c.edges, c.devices): c
            for order in orders
            for c in split_block(ctx, i, j, order, found.step)
            if (c.edges, c.devices) not in found.splits
        }
        found.splits.update(cands)
        _refine_best(ctx, i, j, cands.values(), found, refine_within, bound)
        return found.best
    best = found.best
    seeds: list[BlockChoice] = []
    for r in sorted(found.refined, key=lambda r: r.cost):
        if r.cost * (1 - search_within) >= min(best.cost, bound) or len(seeds) == SEARCH_SEEDS:
            break
        if len(r.devices) >= 2 and all(r.devices != s.devices for s in seeds):
            seeds.append(r)
    for seed in seeds:
        r = search_orders(ctx, i, j, seed, found, refine_within, bound)
        if r.cost < best.cost:
            best = r
    return best


@dataclass(frozen=True)
class DPResult:
    cost: float
    """Sum of the chosen blocks' makespans (without the head)."""
    blocks: tuple[tuple[int, int, BlockChoice], ...]


def dp_blocks(
    ctx: Context,
    resolution: int = DEFAULT_RESOLUTION,
    refine_within: float = 0.15,
    all_orders_upto: int = 3,
    search_within: float = SEARCH_WITHIN,
) -> DPResult:
    """The bottom-up DP over cut points with argmin backtracking, then the order
    search on the blocks of the plans within ``search_within`` of the best (0: none)."""
    n = ctx.n
    total = [0.0] + [float("inf")] * n
    searched: dict[tuple[int, int], BlockSearch] = {}
    for j in range(1, n + 1):
        # Short blocks first: they are usually best, so the lower bound prunes more.
        for i in range(j - 1, -1, -1):
            if total[i] == float("inf") or total[i] + ctx.lower_bound(i, j) >= total[j]:
                continue
            found = search_block(
                ctx,
                i,
                j,
                resolution,
                refine_within,
                total[j] - total[i],
                all_orders_upto,
            )
            searched[(i, j)] = found
            total[j] = min(total[j], total[i] + found.best.cost)
    costs = {ij: found.best for ij, found in searched.items()}
    if search_within > 0:
        # A block can be on a plan within search_within of the best one only if it
        # costs less than `room`: what such a plan leaves it after the best way to
        # its start and the best way on from its end.
        after = _suffix_totals(n, costs)
        limit = total[n] / (1 - search_within)
        for (i, j), found in searched.items():
            room = limit - total[i] - after[j]
            if found.best.cost < room:
                costs[(i, j)] = improve_order(ctx, i, j, found, refine_within, room, search_within)
    return _best_plan(n, costs)


def _suffix_totals(n: int, costs: Mapping[tuple[int, int], BlockChoice]) -> list[float]:
    """Cheapest sum of block costs in ``costs`` from each boundary to ``n``."""
    total = [float("inf")] * n + [0.0]
    for (i, j), c in sorted(costs.items(), key=lambda kv: -kv[0][0]):
        total[i] = min(total[i], c.cost + total[j])
    return total


def _best_plan(n: int, costs: Mapping[tuple[int, int], BlockChoice]) -> DPResult:
    """The cheapest chain of blocks in ``costs`` from boundary 0 to ``n``."""
    total = [0.0] + [float("inf")] * n
    arg: list[tuple[int, BlockChoice] | None] = [None] * (n + 1)
    for (i, j), c in sorted(costs.items(), key=lambda kv: kv[0][1]):
        if total[i] + c.cost < total[j]:
            total[j] = total[i] + c.cost
            arg[j] = (i, c)
    blocks: list[tuple[int, int, BlockChoice]] = []
    j = n
    while j > 0:
        step = arg[j]
        assert step is not None
        i, c = step
        blocks.append((i, j, c))
        j = i
    blocks.reverse()
    return DPResult(total[n], tuple(blocks))


def plan_edgeci(
    spec: ModelSpec,
    testbed: Testbed,
    resolution: int = DEFAULT_RESOLUTION,
    ctx: Context | None = None,
) -> Plan:
    ctx = ctx or Context(spec, testbed)
    res = dp_blocks(ctx, resolution)
    stages: list[Stage] = []
    for i, j, c in res.blocks:
        if len(c.devices) == 1:
            stages.append(ctx.single_stage(i, j, c.devices[0]))
        else:
            stages.append(ctx.strips_stage(i, j, c.edges, c.devices))
    return ctx.make_plan(
        "edgeci",
        stages,
        predicted=res.cost + ctx.head_seconds(),
        notes={"resolution": resolution},
    )

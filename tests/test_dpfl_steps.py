"""The steps of DPFL (``edgeci_p2p.planners.dpfl``) one at a time, on hand-made costs.

A fake context stands in for :class:`edgeci_p2p.planners.context.Context`: per-device
affine times (which drive the equal-finish split), single-device costs and a strip-cost
function chosen per test, so that each heuristic step (split, refinement, candidate
orders, early stop, order search, seeds) is the one that decides the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations, pairwise, permutations

import pytest

from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import dpfl
from edgeci_p2p.planners.context import Affine
from edgeci_p2p.planners.dpfl import (
    BlockChoice,
    BlockSearch,
    _best_plan,
    _refine_best,
    _suffix_totals,
    _with_minimal_strips,
    candidate_sets,
    compact_strips,
    dp_blocks,
    equal_finish_rows,
    improve_order,
    plan_edgeci,
    ranked_devices,
    refine,
    round_to_grid,
    search_block,
    search_orders,
    split_block,
)
from tests.planfakes import fake_testbed, sub_spec

Cost = Callable[[tuple[int, ...], tuple[int, ...]], float]
INF = math.inf


def rows_only(c1: float = 1.0, c0: float = 0.0) -> Affine:
    """A remote device that only computes (no radio time): its time is ``c1*r + c0``."""
    return Affine(x1=0.0, x0=0.0, c1=c1, c0=c0, y1=0.0, y0=0.0, lat=0.0)


class FakeSpec:
    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def shape_at(self, b: int) -> tuple[int, int, int]:
        return (1, self.height, self.width)


class FakeCtx:
    """What dpfl asks of a Context: one-unit models, every block the same."""

    def __init__(
        self,
        cost: Cost,
        n_dev: int,
        height: int = 12,
        width: int = 8,
        affines: Sequence[Affine] | None = None,
        singles: Sequence[float] | None = None,
        n: int = 1,
    ) -> None:
        self.cost, self.n_dev, self.n = cost, n_dev, n
        self.spec = FakeSpec(height, width)
        self.aid = 99  # the auctioneer holds no strip: every device is remote
        self.affines = list(affines or [rows_only()] * n_dev)
        self.singles = list(singles or [10.0] * n_dev)
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def affine(self, d: int, i: int, j: int) -> Affine:
        return self.affines[d]

    def single_cost(self, d: int, i: int, j: int) -> float:
        return self.singles[d]

    def strips_cost(self, i: int, j: int, edges: Sequence[int], devices: Sequence[int]) -> float:
        key = (tuple(edges), tuple(devices))
        self.calls.append(key)
        return self.cost(*key)

    def lower_bound(self, i: int, j: int) -> float:
        return 0.0


def sizes(edges: Sequence[int]) -> list[int]:
    return [b - a for a, b in pairwise(edges)]


def search(
    ctx: FakeCtx, best: BlockChoice, coarse: bool, ranked: Sequence[int] | None = None
) -> BlockSearch:
    return BlockSearch(best, [], set(), set(), list(ranked or range(ctx.n_dev)), 1, coarse)


# ---- ranked_devices / candidate_sets ----------------------------------------------------


def test_ranked_devices_by_time_per_row_then_id() -> None:
    per_row = [3.0, 1.0, 2.0, 1.0]
    ctx = FakeCtx(lambda e, d: 1.0, 4, affines=[rows_only(c1=t) for t in per_row])
    assert ranked_devices(ctx, 0, 1) == [1, 3, 2, 0]  # type: ignore[arg-type]


def test_candidate_sets_every_order_up_to_three_devices() -> None:
    assert candidate_sets([2, 0, 1]) == [
        [(2, 0), (0, 2)],
        [(2, 1), (1, 2)],
        [(0, 1), (1, 0)],
        list(permutations((2, 0, 1))),
    ]


def test_candidate_sets_rank_prefixes_beyond() -> None:
    assert candidate_sets([3, 1, 2, 0]) == [[(3, 1)], [(3, 1, 2)], [(3, 1, 2, 0)]]
    assert candidate_sets([3, 1, 2, 0], all_orders_upto=4)[-1] == list(permutations((3, 1, 2, 0)))


# ---- _with_minimal_strips ---------------------------------------------------------------


def test_minimal_strips_take_from_the_largest_strip() -> None:
    assert _with_minimal_strips((0, 10, 12), (0, 1), (0, 1, 2), 1) == (0, 9, 11, 12)


def test_minimal_strips_donor_may_keep_exactly_one_step() -> None:
    assert _with_minimal_strips((0, 2), (0,), (0, 1), 1) == (0, 1, 2)
    assert _with_minimal_strips((0, 8), (0,), (0, 1), 4) == (0, 4, 8)


def test_minimal_strips_none_when_the_donor_is_under_two_steps() -> None:
    assert _with_minimal_strips((0, 7), (0,), (0, 1), 4) is None


def test_minimal_strips_never_return_an_empty_strip() -> None:
    # Device 1's 2-row strip snaps to nothing on the 4-row grid: no valid edges.
    assert _with_minimal_strips((0, 8, 10), (0, 1), (1, 2, 0), 4) is None


# ---- equal_finish_rows / round_to_grid / compact_strips ---------------------------------


def test_equal_finish_rows_none_for_a_device_with_no_per_row_time() -> None:
    # A time that does not grow with the strip fixes no height: None, not a division
    # by zero, for a remote device after the first and for the auctioneer alike.
    flat = rows_only(c1=0.0)
    assert equal_finish_rows([(0, rows_only()), (1, flat)], 99, 12) is None
    assert equal_finish_rows([(0, rows_only()), (99, flat)], 99, 12) is None


def test_round_to_grid_rounds_cumulative_rows_in_grid_steps() -> None:
    # 5 rows is 1.25 steps of 4: the edge goes to row 4 (in steps, not rows times steps).
    assert round_to_grid([5.0, 7.0], 12, 4) == [0, 4, 12]


def test_compact_strips_drops_empty_strips_only() -> None:
    assert compact_strips((0, 4, 4, 12), (0, 1, 2)) == ((0, 4, 12), (0, 2))


# ---- split_block ------------------------------------------------------------------------


def edge_cost(edges: tuple[int, ...], devices: tuple[int, ...]) -> float:
    return len(devices) + edges[1] / 100


def test_split_block_equal_devices_split_evenly_once() -> None:
    ctx = FakeCtx(edge_cost, 2)
    got = split_block(ctx, 0, 1, (1, 0), 1)  # type: ignore[arg-type]
    assert got == [BlockChoice(edge_cost((0, 6, 12), (1, 0)), (0, 6, 12), (1, 0))]


def test_split_block_one_device_has_no_split() -> None:
    assert split_block(FakeCtx(edge_cost, 2), 0, 1, (1,), 1) == []  # type: ignore[arg-type]


def test_split_block_keeps_a_share_above_half_a_step() -> None:
    # Shares 10.5 and 1.5 rows: the second device keeps its strip (10.5 rounds to 10).
    ctx = FakeCtx(edge_cost, 2, affines=[rows_only(), rows_only(c0=9.0)])
    got = split_block(ctx, 0, 1, (0, 1), 1)  # type: ignore[arg-type]
    assert got == [BlockChoice(edge_cost((0, 10, 12), (0, 1)), (0, 10, 12), (0, 1))]


def test_split_block_drops_a_slow_device_resolves_and_forces_it_back() -> None:
    ctx = FakeCtx(edge_cost, 3, affines=[rows_only(), rows_only(), rows_only(c0=100.0)])
    got = split_block(ctx, 0, 1, (0, 1, 2), 1)  # type: ignore[arg-type]
    assert [(c.edges, c.devices) for c in got] == [
        ((0, 6, 12), (0, 1)),  # the other two re-solved alone
        ((0, 5, 11, 12), (0, 1, 2)),  # and every device kept, one step for the dropped one
    ]
    assert all(c.cost == edge_cost(c.edges, c.devices) for c in got)


@pytest.mark.parametrize(
    ("c0", "want"),
    [
        # Shares 5.25, 0.5, 6.25: exactly half a step is kept.
        ((1.0, 5.75, 0.0), [((0, 5, 6, 12), (0, 1, 2))]),
        # Shares 5.25, 0.375, 6.375 (over a third of a step, under half): dropped, the
        # other two re-solved, then forced back.
        ((1.125, 6.0, 0.0), [((0, 5, 12), (0, 2)), ((0, 5, 6, 12), (0, 1, 2))]),
    ],
)
def test_split_block_drops_a_share_strictly_under_half_a_step(
    c0: tuple[float, ...], want: list[tuple[tuple[int, ...], tuple[int, ...]]]
) -> None:
    # The small share sits in the middle, where the cumulative rounding (5.25 plus it
    # rounds to 6) gives it a whole row: keeping it or not changes the answer.
    ctx = FakeCtx(edge_cost, 3, affines=[rows_only(c0=c) for c in c0])
    got = split_block(ctx, 0, 1, (0, 1, 2), 1)  # type: ignore[arg-type]
    assert [(c.edges, c.devices) for c in got] == want


def test_split_block_down_to_one_device_forces_a_one_step_strip() -> None:
    ctx = FakeCtx(edge_cost, 2, affines=[rows_only(), rows_only(c0=100.0)])
    got = split_block(ctx, 0, 1, (0, 1), 1)  # type: ignore[arg-type]
    assert [(c.edges, c.devices) for c in got] == [((0, 11, 12), (0, 1))]


def test_split_block_forces_when_the_map_has_exactly_one_step_per_device() -> None:
    ctx = FakeCtx(edge_cost, 2, height=2, affines=[rows_only(), rows_only(c0=100.0)])
    got = split_block(ctx, 0, 1, (0, 1), 1)  # type: ignore[arg-type]
    assert [(c.edges, c.devices) for c in got] == [((0, 1, 2), (0, 1))]


# ---- refine -----------------------------------------------------------------------------


def start(ctx: FakeCtx, edges: tuple[int, ...], devices: tuple[int, ...]) -> BlockChoice:
    return BlockChoice(ctx.cost(edges, devices), edges, devices)


def test_refine_walks_edges_both_ways_over_several_passes() -> None:
    target = (2, 7, 3)

    def cost(edges: tuple[int, ...], devices: tuple[int, ...]) -> float:
        return 1.0 + sum((s - t) ** 2 for s, t in zip(sizes(edges), target, strict=True))

    ctx = FakeCtx(cost, 3)
    got = refine(ctx, 0, 1, start(ctx, (0, 4, 8, 12), (0, 1, 2)), 1)  # type: ignore[arg-type]
    assert got == BlockChoice(1.0, (0, 2, 9, 12), (0, 1, 2))


def test_refine_slides_a_strip_with_a_two_edge_move() -> None:
    # The middle strip must stay 4 rows: only moving both its edges together helps.
    def cost(edges: tuple[int, ...], devices: tuple[int, ...]) -> float:
        s = sizes(edges)
        return 1.0 + 100 * abs(s[1] - 4) + (s[0] - 2) ** 2 + (s[2] - 6) ** 2

    ctx = FakeCtx(cost, 3)
    got = refine(ctx, 0, 1, start(ctx, (0, 4, 8, 12), (0, 1, 2)), 1)  # type: ignore[arg-type]
    assert got == BlockChoice(1.0, (0, 2, 6, 12), (0, 1, 2))


def test_refine_never_empties_a_strip() -> None:
    def cost(edges: tuple[int, ...], devices: tuple[int, ...]) -> float:
        s = sizes(edges)
        return 10.0 * s[0] + s[1] + 10.0 * s[2]

    ctx = FakeCtx(cost, 3)
    got = refine(ctx, 0, 1, start(ctx, (0, 4, 8, 12), (0, 1, 2)), 1)  # type: ignore[arg-type]
    assert got.edges == (0, 1, 11, 12)


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_refine_moves_only_on_a_strict_improvement(level: float) -> None:
    ctx = FakeCtx(lambda e, d: level, 3)
    choice = start(ctx, (0, 4, 8, 12), (0, 1, 2))
    assert refine(ctx, 0, 1, choice, 1) is choice  # type: ignore[arg-type]


# ---- search_block -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "resolution", "coarse"), [(12, 56, True), (13, 56, False), (38, 13, True)]
)
def test_search_block_coarse_means_at_most_twelve_grid_rows(
    height: int, resolution: int, coarse: bool
) -> None:
    ctx = FakeCtx(lambda e, d: 1.0, 2, height=height)
    assert search_block(ctx, 0, 1, resolution, 0.15).coarse is coarse  # type: ignore[arg-type]


def test_search_block_single_device_covers_the_map() -> None:
    ctx = FakeCtx(lambda e, d: 5.0, 2, singles=[3.0, 2.0])
    assert search_block(ctx, 0, 1, 56, 0.15).best == BlockChoice(2.0, (0, 12), (1,))  # type: ignore[arg-type]


def test_search_block_one_row_map_tries_no_split() -> None:
    ctx = FakeCtx(lambda e, d: 1.0, 2, height=1, singles=[3.0, 2.0])
    found = search_block(ctx, 0, 1, 56, 0.15)  # type: ignore[arg-type]
    assert found.best == BlockChoice(2.0, (0, 1), (1,))
    assert (found.tried, found.refined, ctx.calls) == (set(), [], [])


def prefixes(*ks: int) -> set[tuple[int, ...]]:
    return {tuple(range(k)) for k in ks}


def test_search_block_rank_prefixes_stop_after_two_that_do_not_help() -> None:
    # No split over 2 devices (inf), 3 helps, 4 ties (1st no-help), 5 is worse (2nd): stop.
    by_size = {2: INF, 3: 5.0, 4: 5.0, 5: 6.0, 6: 7.0}
    ctx = FakeCtx(lambda e, d: by_size[len(d)], 6)
    found = search_block(ctx, 0, 1, 56, 0.15)  # type: ignore[arg-type]
    assert found.tried == prefixes(2, 3, 4, 5)
    assert found.best.cost == 5.0


def test_search_block_all_orders_only_up_to_its_bound() -> None:
    ctx = FakeCtx(lambda e, d: 1.0, 4)
    assert search_block(ctx, 0, 1, 56, 0.15).tried == prefixes(2, 3, 4)  # type: ignore[arg-type]
    every = {o for k in (2, 3, 4) for c in combinations(range(4), k) for o in permutations(c)}
    found = search_block(ctx, 0, 1, 56, 0.15, all_orders_upto=4)  # type: ignore[arg-type]
    assert found.tried == every


# ---- _refine_best -----------------------------------------------------------------------


def refine_best(coarse: bool, cand_cost: float, refine_within: float) -> BlockSearch:
    ctx = FakeCtx(lambda e, d: cand_cost, 2)
    found = search(ctx, BlockChoice(1.0, (0, 12), (0,)), coarse)
    cand = BlockChoice(cand_cost, (0, 6, 12), (0, 1))
    _refine_best(ctx, 0, 1, [cand], found, refine_within, INF)  # type: ignore[arg-type]
    return found


def test_refine_best_refines_everything_on_a_coarse_grid() -> None:
    assert len(refine_best(True, 5.0, 0.15).refined) == 1
    assert refine_best(False, 5.0, 0.15).refined == []


def test_refine_best_includes_the_within_boundary() -> None:
    assert len(refine_best(False, 2.0, 0.5).refined) == 1  # 2.0 * (1 - 0.5) == 1.0


def test_refine_best_keeps_the_incumbent_on_a_tie() -> None:
    assert refine_best(True, 1.0, 0.15).best.devices == (0,)


# ---- search_orders ----------------------------------------------------------------------


def order_cost(target: tuple[int, ...], good_edge: int, other: float = 1.5) -> Cost:
    """``target`` costs 0.5 with its first inner edge at ``good_edge`` (2.0 as split,
    one row away); every other order costs ``other``."""

    def cost(edges: tuple[int, ...], devices: tuple[int, ...]) -> float:
        return 0.5 + 1.5 * abs(edges[1] - good_edge) if devices == target else other

    return cost


def test_search_orders_refines_a_neighbour_at_the_within_boundary() -> None:
    ctx = FakeCtx(order_cost((1, 0), 5), 5)
    seed = BlockChoice(1.0, (0, 6, 12), (0, 1))
    found = search(ctx, seed, coarse=False)
    got = search_orders(ctx, 0, 1, seed, found, 0.5, INF)  # type: ignore[arg-type]
    assert got == BlockChoice(0.5, (0, 5, 12), (1, 0))
    assert {(1, 0), (2, 0, 1), (0, 2, 1), (0, 1, 2)} <= found.tried
    assert ((0, 6, 12), (1, 0)) in found.splits


def test_search_orders_refines_every_neighbour_on_a_coarse_grid() -> None:
    ctx = FakeCtx(order_cost((1, 0), 5), 5)
    seed = BlockChoice(1.0, (0, 6, 12), (0, 1))
    found = search(ctx, seed, coarse=True)
    got = search_orders(ctx, 0, 1, seed, found, 0.15, INF)  # type: ignore[arg-type]
    assert got == BlockChoice(0.5, (0, 5, 12), (1, 0))


def test_search_orders_skips_tried_orders_but_not_the_rest() -> None:
    ctx = FakeCtx(order_cost((0, 1, 2), 3), 5)
    seed = BlockChoice(1.0, (0, 6, 12), (0, 1))
    found = search(ctx, seed, coarse=True)
    found.tried.add((2, 0, 1))
    got = search_orders(ctx, 0, 1, seed, found, 0.15, INF)  # type: ignore[arg-type]
    assert got == BlockChoice(0.5, (0, 3, 8, 12), (0, 1, 2))
    assert not any(d == (2, 0, 1) for _, d in ctx.calls)


SLOW_THIRD = [rows_only(), rows_only(), rows_only(c0=100.0)]
"""Device 2 is always dropped: every order with it re-solves to a split of 0 and 1,
then adds its forced split with device 2 on one row."""


def test_search_orders_skips_a_seen_split_but_not_the_orders_forced_one() -> None:
    # (0, 2, 1) re-solves to the seed's own split, already seen; its forced split
    # (0, 5, 6, 12) comes after it and is the only better one.
    ctx = FakeCtx(order_cost((0, 2, 1), 5), 3, affines=SLOW_THIRD)
    seed = BlockChoice(1.0, (0, 6, 12), (0, 1))
    found = search(ctx, seed, coarse=True)
    found.splits.add((seed.edges, seed.devices))
    got = search_orders(ctx, 0, 1, seed, found, 0.15, INF)  # type: ignore[arg-type]
    assert got == BlockChoice(0.5, (0, 5, 6, 12), (0, 2, 1))


def test_search_orders_skips_a_split_outside_the_window_but_not_the_next() -> None:
    # Fine grid: (2, 0, 1)'s re-solved split (0, 6, 12), new but at 3.0, is not
    # refined; its forced split (0, 1, 6, 12) after it, the only better one, still is.
    ctx = FakeCtx(order_cost((2, 0, 1), 1, other=3.0), 3, affines=SLOW_THIRD)
    seed = BlockChoice(1.0, (0, 4, 12), (0, 1))
    found = search(ctx, seed, coarse=False)
    got = search_orders(ctx, 0, 1, seed, found, 0.15, INF)  # type: ignore[arg-type]
    assert got == BlockChoice(0.5, (0, 1, 6, 12), (2, 0, 1))


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_search_orders_moves_only_on_a_strict_improvement(level: float) -> None:
    ctx = FakeCtx(lambda e, d: level, 5)
    seed = BlockChoice(level, (0, 6, 12), (0, 1))
    found = search(ctx, seed, coarse=True)
    assert search_orders(ctx, 0, 1, seed, found, 0.15, INF) is seed  # type: ignore[arg-type]


# ---- improve_order ----------------------------------------------------------------------


def test_improve_order_tries_every_order_of_two_devices_too() -> None:
    # Strips are rows: a one-column map still splits.
    ctx = FakeCtx(order_cost((2, 1), 5, other=1.0), 3, width=1)
    found = search(ctx, BlockChoice(2.0, (0, 12), (0,)), coarse=True)
    got = improve_order(ctx, 0, 1, found, 0.15)  # type: ignore[arg-type]
    assert got == BlockChoice(0.5, (0, 5, 12), (2, 1))


def test_improve_order_leaves_a_one_row_map_alone() -> None:
    ctx = FakeCtx(lambda e, d: 1.0, 3, height=1)
    found = search(ctx, BlockChoice(2.0, (0, 1), (0,)), coarse=True)
    assert improve_order(ctx, 0, 1, found, 0.15) is found.best  # type: ignore[arg-type]
    assert (found.tried, ctx.calls) == (set(), [])


def seeds_of(
    monkeypatch: pytest.MonkeyPatch, refined: list[tuple[float, tuple[int, ...]]], within: float
) -> tuple[list[tuple[int, ...]], BlockChoice, BlockChoice]:
    """The seeds improve_order hands to search_orders (which here returns its seed)."""
    seen: list[tuple[int, ...]] = []

    def fake_search(ctx, i, j, seed, found, refine_within, bound):  # type: ignore[no-untyped-def]
        seen.append(seed.devices)
        return seed

    monkeypatch.setattr(dpfl, "search_orders", fake_search)
    ctx = FakeCtx(lambda e, d: 1.0, 5)
    found = search(ctx, BlockChoice(1.0, (0, 12), (4,)), coarse=False)
    found.refined = [BlockChoice(c, (0, 6, 12)[: len(d) + 1], d) for c, d in refined]
    got = improve_order(ctx, 0, 1, found, 0.15, INF, within)  # type: ignore[arg-type]
    return seen, got, found.best


def test_improve_order_seeds_two_distinct_multi_device_orders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refined = [(1.0, (0, 1)), (1.0, (0, 1)), (1.05, (2,)), (1.05, (1, 0)), (1.09, (2, 3))]
    seen, got, best = seeds_of(monkeypatch, refined, 0.1)
    assert seen == [(0, 1), (1, 0)]
    assert got is best  # seeds that only tie the best do not replace it


def test_improve_order_seeds_only_strictly_within(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, _, _ = seeds_of(monkeypatch, [(2.0, (0, 1))], 0.5)  # 2.0 * (1 - 0.5) == best
    assert seen == []


# ---- dp_blocks / plan_edgeci ------------------------------------------------------------


def test_dp_blocks_order_search_uses_refine_within_and_room() -> None:
    # Four devices: the DP's candidates are rank prefixes; only the order search
    # (every order of every subset) finds (3, 2).
    def cost(edges: tuple[int, ...], devices: tuple[int, ...]) -> float:
        return 0.2 if devices == (3, 2) else 0.3

    ctx = FakeCtx(cost, 4, height=13, singles=[0.5] * 4)  # 13 rows: not a coarse grid
    res = dp_blocks(ctx)  # type: ignore[arg-type]
    assert res.cost == 0.2
    assert [(i, j, c.devices) for i, j, c in res.blocks] == [(0, 1, (3, 2))]
    assert dp_blocks(ctx, search_within=0).cost == 0.3  # type: ignore[arg-type]


def test_dp_blocks_passes_search_within_to_the_order_search() -> None:
    # Five devices: the order search seeds from refined splits within search_within.
    # (0, 1, 2, 3) at 1.5 is a seed only within 0.5 of the best (0, 1) at 1.0, and only
    # from it is (0, 1, 3, 2) one step away.
    by_order = {(0, 1): 1.0, (0, 1, 2, 3): 1.5, (0, 1, 3, 2): 0.5}
    ctx = FakeCtx(lambda e, d: by_order.get(d, 2.0), 5)
    assert dp_blocks(ctx, search_within=0.5).cost == 0.5  # type: ignore[arg-type]
    assert dp_blocks(ctx).cost == 1.0  # type: ignore[arg-type]


def chain(costs: dict[tuple[int, int], float]) -> dict[tuple[int, int], BlockChoice]:
    return {ij: BlockChoice(c, (0, 12), (0,)) for ij, c in costs.items()}


def test_suffix_totals_sum_the_cheapest_way_on() -> None:
    assert _suffix_totals(2, chain({(0, 1): 1.0, (1, 2): 2.0, (0, 2): 5.0})) == [3.0, 2.0, 0.0]


def test_best_plan_keeps_the_first_block_found_on_a_tie() -> None:
    # dp_blocks finds the blocks ending at each boundary short ones first; on a tie the
    # first one found stays (blocks sorted by end only, a strict comparison).
    res = _best_plan(2, chain({(0, 1): 1.0, (1, 2): 1.0, (0, 2): 2.0}))
    assert (res.cost, [(i, j) for i, j, _ in res.blocks]) == (2.0, [(0, 1), (1, 2)])


def test_plan_edgeci_notes_its_resolution() -> None:
    spec = sub_spec(spec_for("vgg11", 40, 40), 0, 2)
    plan = plan_edgeci(spec, fake_testbed([1.0, 2.0], [50.0, 80.0]), resolution=5)
    assert plan.notes == {"resolution": 5}

"""DPFL against exhaustive search over the same plan space with the same cost function.

The plan space: consecutive blocks covering the units; each block either on one
device, or split into full-width row strips with edges on a coarse grid over an
ordered set of two or more devices (any order: strip order = scatter order).
The cost of a plan is the sum of its blocks' exact simulated makespans (stages
are barriers, so it is additive), which is what ``Context.strips_cost`` and
``Context.single_cost`` compute. The exhaustive search enumerates every
segmentation and, per block, every ordered device set and every grid edge vector.

Up to three devices DPFL tries every order of every block itself; with four it
plans with the rank orders and then tries every order on the blocks that can matter
(its order search), which is what the four-device instances check.
"""

from __future__ import annotations

import random
from itertools import combinations, pairwise, permutations

import pytest

from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.dpfl import (
    _with_minimal_strips,
    dp_blocks,
    grid_step,
    neighbour_orders,
    plan_edgeci,
)
from edgeci_p2p.planners.testbeds import load_testbed
from tests.planfakes import random_testbed, sub_spec

RESOLUTION = 5
SOURCES = [spec_for("vgg11", 40, 40), spec_for("resnet18", 64, 64), spec_for("vgg13_bn", 32, 48)]


def exhaustive_block(ctx: Context, i: int, j: int) -> float:
    h = ctx.spec.shape_at(j)[1]
    best = min(ctx.single_cost(d, i, j) for d in range(ctx.n_dev))
    if h < 2:
        return best
    step = grid_step(h, RESOLUTION)
    inner = list(range(step, h, step))
    for k in range(2, ctx.n_dev + 1):
        for devs in permutations(range(ctx.n_dev), k):
            for cuts in combinations(inner, k - 1):
                best = min(best, ctx.strips_cost(i, j, [0, *cuts, h], devs))
    return best


def exhaustive(ctx: Context) -> float:
    n = ctx.n
    block = {(i, j): exhaustive_block(ctx, i, j) for j in range(1, n + 1) for i in range(j)}
    best = float("inf")
    for mask in range(1 << (n - 1)):  # every segmentation of n units
        cuts = [b for b in range(1, n) if mask >> (b - 1) & 1]
        edges = [0, *cuts, n]
        best = min(best, sum(block[(a, b)] for a, b in pairwise(edges)))
    return best


def instances(count: int) -> list[tuple[int, Context]]:
    out = []
    for seed in range(count):
        rnd = random.Random(seed)
        src = rnd.choice(SOURCES)
        length = rnd.randint(2, min(10, src.n_units))
        start = rnd.randrange(src.n_units - length + 1)
        spec = sub_spec(src, start, start + length)
        out.append((seed, Context(spec, random_testbed(rnd, rnd.randint(1, 3)))))
    return out


def four_device_instances(count: int) -> list[tuple[int, Context]]:
    """Four devices, 8-10 units (seeds of their own: the instances above stay as they were)."""
    out = []
    for seed in range(count):
        rnd = random.Random(10_000 + seed)
        src = rnd.choice(SOURCES)
        length = rnd.randint(8, min(10, src.n_units))
        start = rnd.randrange(src.n_units - length + 1)
        spec = sub_spec(src, start, start + length)
        out.append((seed, Context(spec, random_testbed(rnd, 4))))
    return out


def worst_gap(cases: list[tuple[int, Context]]) -> tuple[float, int]:
    gaps = []
    for seed, ctx in cases:
        dp = dp_blocks(ctx, resolution=RESOLUTION).cost
        ex = exhaustive(ctx)
        assert dp >= ex * (1 - 1e-9), f"seed {seed}: DP {dp} beats exhaustive {ex}: spaces differ"
        gaps.append((dp / ex - 1, seed))
    return max(gaps)


def test_dpfl_matches_exhaustive_search_on_120_random_small_instances() -> None:
    worst, seed = worst_gap(instances(120))
    assert worst <= 0.005, f"seed {seed}: exhaustive search is {worst:.2%} better than DPFL"


def test_dpfl_matches_exhaustive_search_on_four_devices_and_8_to_10_units() -> None:
    # Before the order search (issue 26) DPFL was up to 7.7% off on these, and more
    # than 0.5% off on 34 of them; now it matches exhaustive search on all of them
    # (and on 300).
    worst, seed = worst_gap(four_device_instances(100))
    assert worst <= 0.005, f"seed {seed}: exhaustive search is {worst:.2%} better than DPFL"


def test_vgg16_on_pi3_aofl_4_gets_the_scatter_order_the_rank_orders_missed() -> None:
    # Issue 26: an independent search over DPFL's plan space found 11976.3 ms where
    # the rank orders gave 12199.9 ms; the winning stages scatter to a slow remote
    # device first.
    p = plan_edgeci(spec_for("vgg16"), load_testbed("pi3-aofl-4"))
    assert p.predicted is not None
    assert p.predicted <= 11.9763 * (1 + 1e-5)


def test_neighbour_orders_swap_move_and_bring_in_the_fastest_unused_device() -> None:
    got = neighbour_orders((2, 0, 1), ranked=[0, 3, 1, 2, 4])
    assert len(got) == len(set(got)) and (2, 0, 1) not in got
    assert {(0, 2, 1), (1, 0, 2), (2, 1, 0)} <= set(got)  # swaps
    assert {(0, 1, 2), (1, 2, 0)} <= set(got)  # moves
    assert {(3, 2, 0, 1), (2, 3, 0, 1), (2, 0, 3, 1), (2, 0, 1, 3)} <= set(got)
    assert len(got) == 3 + 2 + 4  # adjacent moves are swaps; device 4 is slower than 3


def test_a_device_brought_back_by_force_keeps_strip_edges_on_the_grid() -> None:
    # 32 rows on a 7-row grid: the dropped device gets the last 4 rows, not 7 (a
    # 25-row edge that no grid-step move could ever bring back onto the grid).
    assert _with_minimal_strips((0, 32), (0,), (0, 2), 7) == (0, 28, 32)
    assert _with_minimal_strips((0, 32), (0,), (2, 0), 7) == (0, 7, 32)
    assert _with_minimal_strips((0, 10), (0,), (0, 2), 7) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dpfl_prediction_is_the_simulated_latency(seed: int) -> None:
    _, ctx = instances(seed + 1)[seed]
    plan = plan_edgeci(ctx.spec, ctx.testbed, resolution=RESOLUTION, ctx=ctx)
    res = simulate(plan, ctx.spec, ctx.testbed)
    assert plan.predicted == pytest.approx(res.latency, rel=1e-12)

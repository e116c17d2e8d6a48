"""DPFL against exhaustive search over the same plan space with the same cost function.

The plan space: consecutive blocks covering the units; each block either on one
device, or split into full-width row strips with edges on a coarse grid over an
ordered set of two or more devices (any order: strip order = scatter order).
The cost of a plan is the sum of its blocks' exact simulated makespans (stages
are barriers, so it is additive), which is what ``Context.strips_cost`` and
``Context.single_cost`` compute. The exhaustive search enumerates every
segmentation and, per block, every ordered device set and every grid edge vector.
"""

from __future__ import annotations

import random
from itertools import combinations, pairwise, permutations

import pytest

from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.dpfl import dp_blocks, grid_step, plan_edgeci
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


def test_dpfl_matches_exhaustive_search_on_120_random_small_instances() -> None:
    gaps = []
    for seed, ctx in instances(120):
        dp = dp_blocks(ctx, resolution=RESOLUTION).cost
        ex = exhaustive(ctx)
        assert dp >= ex * (1 - 1e-9), f"seed {seed}: DP {dp} beats exhaustive {ex}: spaces differ"
        gaps.append((dp / ex - 1, seed))
    worst, seed = max(gaps)
    assert worst <= 0.005, f"seed {seed}: exhaustive search is {worst:.2%} better than DPFL"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dpfl_prediction_is_the_simulated_latency(seed: int) -> None:
    _, ctx = instances(seed + 1)[seed]
    plan = plan_edgeci(ctx.spec, ctx.testbed, resolution=RESOLUTION, ctx=ctx)
    res = simulate(plan, ctx.spec, ctx.testbed)
    assert plan.predicted == pytest.approx(res.latency, rel=1e-12)

"""Winner determination against exhaustive search, and load awareness."""

from __future__ import annotations

import itertools
import random

import pytest

from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.messages import Bid, CallForBids, WorkItem
from edgeci_p2p.auction.winner import (
    INF,
    InfeasibleAssignment,
    PriceTable,
    bottleneck_assignment,
    epsilon_auction,
    optimal_assignment,
    place_one_each,
    reverse_auction,
)
from edgeci_p2p.core.cost import ComputeModel, LinearFit, LinkModel


def peer(name: str, gflops: float, mbps: float, background: float = 0.0) -> Bidder:
    fit = LinearFit(1e-9 / gflops, 0.002)
    return Bidder(
        name,
        ComputeModel({"conv": fit, "pool": LinearFit(8e-9 / gflops, 0.001)}),
        LinkModel.from_mbps(mbps, 6.0),
        horizon=1e9,
        background=background,
    )


def random_instance(rng: random.Random) -> tuple[list[str], list[Bid]]:
    """Bids as live peers would make them: items with FLOPs and slab bytes, peers
    with their own speed, link and (often) a backlog of earlier work."""
    n_items = rng.randint(1, 7)
    n_peers = rng.randint(1, 5)
    items = tuple(
        WorkItem(
            f"item{k}",
            {"conv": int(rng.uniform(0.2e9, 3e9)), "pool": int(rng.uniform(0, 5e6))},
            bytes_in=int(rng.uniform(0.05e6, 2e6)),
            bytes_out=int(rng.uniform(0.05e6, 1e6)),
        )
        for k in range(n_items)
    )
    call = CallForBids("q", "me", "fp", items)
    bids = []
    for p in range(n_peers):
        b = peer(f"p{p}", rng.uniform(1.0, 20.0), rng.uniform(20, 300), rng.choice([0, 0, 0.5]))
        if rng.random() < 0.5:
            b.add_work(rng.uniform(0, 1.0), 0.0)
        bids.append(b.bid(call, 0.0))
    return [it.item_id for it in items], bids


def test_exhaustive_reference_agrees_with_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(40):
        items, bids = random_instance(rng)
        t = PriceTable.from_bids(items, bids)
        best, owner = optimal_assignment(t)
        brute = min(
            t.assignment(list(own)).makespan
            for own in itertools.product(range(len(t.peers)), repeat=len(items))
        )
        assert best == pytest.approx(brute, rel=1e-12)
        assert t.assignment(owner).makespan == pytest.approx(best, rel=1e-12)


def test_reverse_auction_quality_against_exhaustive_search() -> None:
    rng = random.Random(2024)
    ratios = []
    for _ in range(200):
        items, bids = random_instance(rng)
        got = reverse_auction(items, bids)
        assert sorted(got.owner) == sorted(items)
        t = PriceTable.from_bids(items, bids)
        best, _ = optimal_assignment(t)
        assert got.makespan >= best * (1 - 1e-9)  # the reference is a true optimum
        ratios.append(got.makespan / best)
    within_2pct = sum(r <= 1.02 for r in ratios) / len(ratios)
    assert within_2pct >= 0.95, f"only {within_2pct:.1%} within 2% of optimal"
    assert max(ratios) <= 1.10, f"worst case {max(ratios):.3f}x optimal"


def test_greedy_alone_is_what_the_search_improves_on() -> None:
    # The local search must actually do something on this distribution; if plain
    # LPT greedy were already as good, the quality test above would prove nothing.
    rng = random.Random(2024)
    worse = 0
    for _ in range(200):
        items, bids = random_instance(rng)
        g = reverse_auction(items, bids, improve=False).makespan
        s = reverse_auction(items, bids).makespan
        assert s <= g * (1 + 1e-12)
        worse += s < g * (1 - 1e-9)
    assert worse > 0


@pytest.mark.parametrize("backlog", [0.25, 0.5, 1.0, 2.0])
def test_backlogged_peer_gets_less_work_in_proportion(backlog: float) -> None:
    # Two identical peers, 40 identical items of 0.1 s each: the busy one must end
    # up with `backlog` seconds less work (to within one item), so both finish together.
    items = tuple(WorkItem(f"i{k}", {"conv": 100_000_000}) for k in range(40))
    call = CallForBids("q", "me", "fp", items)
    idle = Bidder("idle", ComputeModel({"conv": LinearFit(1e-9, 0.0)}), LinkModel(1e12, 0.0))
    busy = Bidder("busy", ComputeModel({"conv": LinearFit(1e-9, 0.0)}), LinkModel(1e12, 0.0))
    busy.add_work(backlog, now=0.0)
    a = reverse_auction([it.item_id for it in items], [idle.bid(call, 0.0), busy.bid(call, 0.0)])
    work = {p: 0.1 * len(a.items_of(p)) for p in ("idle", "busy")}
    assert work["busy"] < work["idle"]
    assert work["idle"] - work["busy"] == pytest.approx(backlog, abs=0.1 + 1e-9)


def test_more_backlog_never_means_more_work() -> None:
    items = tuple(WorkItem(f"i{k}", {"conv": 100_000_000}) for k in range(30))
    call = CallForBids("q", "me", "fp", items)
    prev = None
    for backlog in (0.0, 0.3, 0.6, 0.9, 1.2, 1.5):
        idle = Bidder("idle", ComputeModel({"conv": LinearFit(1e-9, 0.0)}), LinkModel(1e12, 0.0))
        busy = Bidder("busy", ComputeModel({"conv": LinearFit(1e-9, 0.0)}), LinkModel(1e12, 0.0))
        busy.add_work(backlog, now=0.0)
        bids = [idle.bid(call, 0.0), busy.bid(call, 0.0)]
        a = reverse_auction([it.item_id for it in items], bids)
        n = len(a.items_of("busy"))
        if prev is not None:
            assert n < prev
        prev = n


def test_epsilon_auction_is_within_n_eps_of_optimal() -> None:
    rng = random.Random(3)
    for _ in range(150):
        n = rng.randint(1, 5)
        m = rng.randint(n, 6)
        cost = [[rng.uniform(0, 10) for _ in range(m)] for _ in range(n)]
        if rng.random() < 0.3:  # forbidden pairs, keeping a feasible diagonal
            for i in range(n):
                for j in range(m):
                    if j != i and rng.random() < 0.4:
                        cost[i][j] = INF
        eps = 1e-3
        got = epsilon_auction(cost, eps)
        assert len(set(got)) == n and all(cost[i][j] < INF for i, j in enumerate(got))
        total = sum(cost[i][j] for i, j in enumerate(got))
        opt = min(sum(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        assert total <= opt + n * eps + 1e-9


def test_bottleneck_assignment_is_exact() -> None:
    rng = random.Random(5)
    for _ in range(150):
        n = rng.randint(1, 5)
        m = rng.randint(n, 6)
        cost = [[float(rng.randint(0, 20)) for _ in range(m)] for _ in range(n)]
        got = bottleneck_assignment(cost)
        worst = max(cost[i][j] for i, j in enumerate(got))
        opt = min(max(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        assert worst == opt


def test_epsilon_auction_reports_an_impossible_assignment() -> None:
    with pytest.raises(InfeasibleAssignment):
        epsilon_auction([[1.0, INF], [2.0, INF]], 0.01)
    with pytest.raises(InfeasibleAssignment):
        epsilon_auction([[1.0], [2.0]], 0.01)


def test_place_one_each_puts_the_big_strip_on_the_idle_fast_peer() -> None:
    # Edge strips carry less halo than the middle one; the middle (biggest) strip
    # must go to the peer that finishes it first once backlogs are counted.
    items = [
        WorkItem("top", {"conv": 10**9}),
        WorkItem("mid", {"conv": 2 * 10**9}),
        WorkItem("bot", {"conv": 10**9}),
    ]
    call = CallForBids("q", "me", "fp", tuple(items))
    fast_busy = peer("fast-busy", 20.0, 1000.0)
    fast_busy.add_work(0.5, 0.0)
    fast_idle = peer("fast-idle", 20.0, 1000.0)
    slow = peer("slow", 5.0, 1000.0)
    bids = [b.bid(call, 0.0) for b in (fast_busy, fast_idle, slow)]
    a = place_one_each(["top", "mid", "bot"], bids)
    assert a.owner["mid"] == "fast-idle"
    assert len(set(a.owner.values())) == 3

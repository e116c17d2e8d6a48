"""AWAS figures: winner determination against exhaustive search, planning time of an
auction round, and the dynamic-load simulation at a chosen offered load.

    .venv/bin/python benchmarks/awas.py [--cases 1000] [--load 0.2] [--requests 40]
        [--seeds 3] [--skip-sim]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from edgeci_p2p.auction.awas import AwasPlanner, probe_call
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.messages import Bid, CallForBids, WorkItem
from edgeci_p2p.auction.winner import PriceTable, optimal_assignment, reverse_auction
from edgeci_p2p.core.cost import ComputeModel, LinearFit, LinkModel
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.scenarios.dynamic_load import Scenario, run_command


def instance(rng: random.Random, unrelated: bool) -> tuple[list[str], list[Bid]]:
    """<= 7 items, <= 5 peers. Realistic: item FLOPs/bytes x peer speed/link, backlogs.
    Unrelated: every (peer, item) duration drawn independently (a stress case)."""
    n_items, n_peers = rng.randint(1, 7), rng.randint(1, 5)
    items = tuple(
        WorkItem(
            f"i{k}",
            {"conv": int(rng.uniform(0.2e9, 3e9))},
            int(rng.uniform(0.05e6, 2e6)),
            int(rng.uniform(0.05e6, 1e6)),
        )
        for k in range(n_items)
    )
    call = CallForBids("q", "me", "fp", items)
    bids = []
    for p in range(n_peers):
        gflops = rng.uniform(1.0, 20.0)
        b = Bidder(
            f"p{p}",
            ComputeModel({"conv": LinearFit(1e-9 / gflops, 0.002)}),
            LinkModel.from_mbps(rng.uniform(20, 300), 6.0),
            horizon=1e9,
        )
        if rng.random() < 0.5:
            b.add_work(rng.uniform(0, 1.0), 0.0)
        bid = b.bid(call, 0.0)
        if unrelated:
            bid = Bid(
                "q", bid.bidder, bid.backlog, {i.item_id: rng.uniform(0.05, 1.0) for i in items}
            )
        bids.append(bid)
    return [i.item_id for i in items], bids


def quality(cases: int) -> None:
    print(f"winner determination vs exhaustive search, {cases} seeded cases per row")
    print(f"{'instances':<11} {'method':<22} {'<=2% of opt':>12} {'worst':>8} {'mean ms':>8}")
    for unrelated in (False, True):
        for improve in (False, True):
            rng = random.Random(2024)
            ratios, times = [], []
            for _ in range(cases):
                items, bids = instance(rng, unrelated)
                t0 = time.perf_counter()
                got = reverse_auction(items, bids, improve=improve)
                times.append(time.perf_counter() - t0)
                best, _ = optimal_assignment(PriceTable.from_bids(items, bids))
                ratios.append(got.makespan / best)
            name = "LPT greedy + search" if improve else "LPT greedy only"
            within = sum(r <= 1.02 for r in ratios) / len(ratios)
            print(
                f"{'unrelated' if unrelated else 'realistic':<11} {name:<22} {within:>12.1%} "
                f"{max(ratios):>7.3f}x {1e3 * statistics.mean(times):>8.2f}"
            )


def round_time() -> None:
    print("\nAWAS+DPFL decision time (bids in -> awards out), idle peers, 5 runs")
    for model, tbn in (("vgg16", "pi4-wifi-4"), ("vgg16", "mixed-8"), ("resnet34", "mixed-8")):
        spec, tb = spec_for(model), load_testbed(tbn)
        call = probe_call("r", tb.names[tb.auctioneer], spec)
        runs = []
        for _ in range(5):
            bids = [
                Bidder(d.name, d.compute, tb.link(i), horizon=1e9).bid(call, 0.0)
                for i, d in enumerate(tb.devices)
            ]
            t0 = time.perf_counter()
            AwasPlanner(spec, tb.shared_medium)(call, bids)
            runs.append(time.perf_counter() - t0)
        print(
            f"  {model:<9} {tbn:<11} min {1e3 * min(runs):6.0f} ms  median "
            f"{1e3 * statistics.median(runs):6.0f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--load", type=float, default=Scenario.load)
    ap.add_argument("--requests", type=int, default=Scenario.requests)
    ap.add_argument("--seeds", type=int, default=Scenario.seeds)
    ap.add_argument("--skip-sim", action="store_true")
    args = ap.parse_args()
    quality(args.cases)
    round_time()
    if not args.skip_sim:
        sc = Scenario(requests=args.requests, load=args.load, seeds=args.seeds)
        print()
        print(run_command(["vgg16", "resnet34"], None, None, False, spec_for, sc))


if __name__ == "__main__":
    main()

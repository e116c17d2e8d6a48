"""Peers that share a machine share its cores (auction/hosts.py): planned as one pool."""

from __future__ import annotations

import pytest

from edgeci_p2p.auction.hosts import LOOP_RESERVE, pool_colocated
from edgeci_p2p.auction.messages import Bid
from edgeci_p2p.hostinfo import machine_id
from tests.daemons import cluster


def bid(who: str, host: str = "", cpus: float = 1.0, host_cpus: float = 2.0) -> Bid:
    return Bid("a", who, duration={"probe": 0.1}, host=host, cpus=cpus, host_cpus=host_cpus)


def test_peers_on_the_auctioneers_crowded_machine_are_declined() -> None:
    # The demo: three one-thread peers on two cores. The auctioneer keeps its core and
    # one for its event loop: nothing is left for the other two.
    bids = [bid("me", "m"), bid("p1", "m"), bid("p2", "m")]
    out = {b.bidder: b for b in pool_colocated(bids, "me")}
    assert out["me"] == bids[0]
    assert out["p1"].declined and out["p2"].declined and not out["p1"].duration


def test_a_round_the_auctioneers_own_bid_missed_still_pools_its_machine() -> None:
    # On a loaded machine the auctioneer's own bid can miss the window: its machine,
    # given apart, still keeps the co-located peers from being planned as free devices.
    bids = [bid("p1", "m"), bid("p2", "m")]
    assert pool_colocated(bids, "me") == bids  # nothing says "me" is on m
    out = {b.bidder: b for b in pool_colocated(bids, "me", bid("me", "m"))}
    assert out["p1"].declined and out["p2"].declined
    # A bid of its own, when there is one, is what counts.
    roomy = [bid("me", "m", 1.0, 16.0), *bids]
    assert pool_colocated(roomy, "me", bid("me", "m")) == roomy


def test_a_loaded_machine_still_keeps_the_auctioneers_core() -> None:
    # Other work on the demo's two cores: each peer measured ~0.4 of a core. The
    # auctioneer still keeps a core and the loop's reserve; nothing is left.
    bids = [bid(p, "m", 0.4, 2.0) for p in ("me", "p1", "p2")]
    out = {b.bidder: b for b in pool_colocated(bids, "me")}
    assert out["p1"].declined and out["p2"].declined


def test_a_machine_with_cores_to_spare_changes_nothing() -> None:
    # Four one-thread peers on a 16-core machine: each has a core of its own.
    bids = [bid(p, "m", 1.0, 16.0) for p in ("me", "a", "b", "c")]
    assert pool_colocated(bids, "me") == bids


def test_an_oversubscribed_machine_stretches_its_peers_bids() -> None:
    # Two 1-core peers on another 1-core machine share it: each at half speed.
    bids = [bid("me", "m1"), bid("a", "m2", 1.0, 1.0), bid("b", "m2", 1.0, 1.0)]
    out = {b.bidder: b for b in pool_colocated(bids, "me")}
    assert out["a"].duration["probe"] == pytest.approx(0.2)
    assert out["b"].duration["probe"] == pytest.approx(0.2)
    # On the auctioneer's own 4-core machine, with 3 cores wanted by others: what is
    # left after its own core and the loop's reserve is shared.
    bids = [bid("me", "m", 1.0, 4.0), bid("a", "m", 1.5, 4.0), bid("b", "m", 1.5, 4.0)]
    out = {b.bidder: b for b in pool_colocated(bids, "me")}
    share = (4.0 - 1.0 - LOOP_RESERVE) / 3.0
    assert out["a"].duration["probe"] == pytest.approx(0.1 / share)


def test_bids_without_a_machine_id_and_declines_are_left_alone() -> None:
    bids = [bid("me", "m"), bid("old"), Bid("a", "x", declined="capacity", host="m", cpus=1)]
    assert pool_colocated(bids, "me") == bids


def test_the_machine_id_is_a_hash_not_the_id(tmp_path: pytest.TempPathFactory) -> None:
    f = tmp_path / "machine-id"  # type: ignore[operator]
    f.write_text("0123456789abcdef0123456789abcdef\n")
    got = machine_id([f])
    assert got == machine_id([f]) and len(got) == 16 and "0123456789" not in got
    assert machine_id([tmp_path / "absent"]) != got  # type: ignore[operator]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_co_located_peers_on_a_crowded_machine_get_no_work() -> None:
    # Three peers that say they share a two-core machine: the auctioneer runs alone
    # and says why, instead of planning them as three independent devices.
    async with cluster(3, host_id="one-machine") as daemons:
        a = daemons[0]
        for d in daemons:  # one thread each on two cores (whatever the load measured)
            d.bidder.cpus, d.bidder.host_cpus = 1.0, 2.0
        decision, _ = await a.make_plan("h1", "resnet34", "edgeci", 224, 224)
        assert decision.nodes == [a.node_id]
        decision, _ = await a.make_plan("h2", "resnet34", "modnn", 224, 224)
        assert set(decision.nodes) == {a.node_id}

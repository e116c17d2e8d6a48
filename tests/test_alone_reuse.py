"""A round that found distributing does not pay is not held again for a second while
the node is otherwise idle and its peers are the same (aio/auctioneer.py)."""

from __future__ import annotations

import time

import pytest

from edgeci_p2p.auction import decider as auctioneer_mod
from tests.daemons import IMAGE, client, cluster


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_recent_finding_that_alone_is_best_skips_the_next_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Demand a 99% gain: every distributed plan is then "not worth it", as ResNet-34's
    # are on the emulated cluster.
    monkeypatch.setattr(auctioneer_mod, "LOCAL_MARGIN", 0.99)
    async with cluster(2) as (a, _):
        try:
            assert a.auctioneer is not None
            clock = [100.0]
            a.auctioneer.clock = lambda: clock[0]
            first, _ = await a.make_plan("r1", "resnet34", "edgeci", 224, 224)
            assert first.round is not None  # a round was held ...
            assert "predicted < 99% gain" in first.plan.notes["decision"]  # ... found alone best
            a.load.running_here = 1  # the request being planned is the only one here
            again, _ = await a.make_plan("r2", "resnet34", "edgeci", 224, 224)
            assert again.round is None and "recent round" in again.plan.notes["decision"]
            assert again.nodes == [a.node_id]
            # Busy with another request: its queue may change the answer, so a round.
            a.load.running_here = 2
            busy, _ = await a.make_plan("r3", "resnet34", "edgeci", 224, 224)
            assert busy.round is not None
            # Found with every peer idle, the finding holds ALONE_IDLE_TTL: busier peers
            # could only make distributing worse.
            a.load.running_here = 1
            clock[0] += auctioneer_mod.ALONE_TTL + 0.1
            held, _ = await a.make_plan("r4", "resnet34", "edgeci", 224, 224)
            assert held.round is None
            clock[0] += auctioneer_mod.ALONE_IDLE_TTL
            stale, _ = await a.make_plan("r5", "resnet34", "edgeci", 224, 224)
            assert stale.round is not None
            # Another model, or another strategy, has its own finding.
            other, _ = await a.make_plan("r6", "resnet34", "edgeci-halo", 224, 224)
            assert other.round is not None
        finally:
            a.load.running_here = 0


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_peers_that_finished_bid_no_backlog() -> None:
    """Work that ran faster than predicted is not left in the backlog (it made the
    next request's bids say 'busy' and miss the auctioneer's plan cache)."""
    async with cluster(3) as daemons:
        for d in daemons:  # every prediction 20x too long: the backlog would outlast the run
            assert d.bidder is not None and d.compute is not None
            d.compute = d.bidder.compute = d.compute.scaled(0.05)
        async with client(daemons[0]) as c:
            res = await c.infer(IMAGE, model="resnet34", strategy="aofl")
        assert len(res.timing["compute"]) >= 2  # type: ignore[arg-type]
        for d in daemons:
            assert d.bidder is not None and d.load.queued_tiles == 0
            assert d.bidder.backlog(time.monotonic()) == 0.0


def test_a_finding_made_while_a_peer_was_busy_holds_only_briefly() -> None:
    from edgeci_p2p.auction.messages import Bid

    idle = [Bid("auc", p, 0.0, {"probe:conv:1": 0.01}) for p in ("a", "b")]
    busy = [*idle[:1], Bid("auc", "b", 0.05, {"probe:conv:1": 0.01})]
    assert auctioneer_mod.alone_ttl(idle) == auctioneer_mod.ALONE_IDLE_TTL
    assert auctioneer_mod.alone_ttl(busy) == auctioneer_mod.ALONE_TTL
    assert auctioneer_mod.ALONE_TTL < auctioneer_mod.ALONE_IDLE_TTL

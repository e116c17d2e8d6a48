"""Peers probe their links with padded pings while idle, and the auctioneer plans with
the probed rate (core/membership.py, aio/daemon.py)."""

from __future__ import annotations

import asyncio

import pytest

from edgeci_p2p.auction.messages import Bid
from edgeci_p2p.core.membership import HEARTBEAT_INTERVAL, PROBE_BYTES
from edgeci_p2p.policy.links import DEFAULT_TILE_OVERHEAD
from tests.daemons import cluster


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.one_loop
async def test_idle_peers_probe_their_links_and_plan_with_the_probed_rate() -> None:
    async with cluster(2) as (a, b):
        member = a.membership.members[b.node_id]
        for _ in range(20):  # a plain ping for the bare RTT, then probes
            if member.probed_at is not None:
                break
            await asyncio.sleep(HEARTBEAT_INTERVAL / 2)
        assert member.probed_at is not None, "no link probe came back"
        assert member.rtt is not None and member.rtt < 0.05  # probes are not RTT samples
        # Loopback crosses 128 KiB within the RTT's noise, so whether a probe there
        # yields a rate is luck: feed one as a 10 MB/s link would give it.
        a.membership.probed(
            b.node_id, member.probed_at, PROBE_BYTES, member.rtt + PROBE_BYTES / 10e6
        )
        assert member.probed_bandwidth is not None
        bid = Bid("auc", b.node_id, 0.0, {"probe:conv:1": 0.01}, 1 << 30, 1e12, 0.0, 0.5)
        planned = a.measured_link(bid)
        assert planned.bandwidth == pytest.approx(member.probed_bandwidth)
        # Per transfer it still charges the per-tile overhead (the prior until tiles
        # have been served): a probe measures the link, not the hand-offs around it.
        assert member.overhead is None
        assert planned.rtt == pytest.approx(max(member.rtt, DEFAULT_TILE_OVERHEAD))
        # A node with work of its own in flight does not probe: the probe would time
        # its own traffic, not the link.
        member.probe_samples.clear()
        a.load.running_here += 1
        try:
            before = member.probed_at
            await asyncio.sleep(HEARTBEAT_INTERVAL * 2.5)
            assert member.probed_at == before
        finally:
            a.load.running_here -= 1
        for _ in range(10):  # idle again: probing resumes
            if member.probed_at != before:
                break
            await asyncio.sleep(HEARTBEAT_INTERVAL / 2)
        assert member.probed_at != before

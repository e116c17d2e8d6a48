"""Peers probe their links with padded pings while idle, and the auctioneer plans with
the probed rate (core/membership.py, aio/daemon.py)."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from edgeci_p2p.aio import heartbeat
from edgeci_p2p.aio.connection import Connection
from edgeci_p2p.auction.messages import Bid
from edgeci_p2p.core.membership import PROBE_BYTES
from edgeci_p2p.policy.links import DEFAULT_TILE_OVERHEAD
from tests.daemons import cluster, wait_until

FAST_HEARTBEAT = 0.1
"""Seconds between heartbeat rounds here (1 s in the daemon): the test waits on rounds."""


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.one_loop
async def test_idle_peers_probe_their_links_and_plan_with_the_probed_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heartbeat, "HEARTBEAT_INTERVAL", FAST_HEARTBEAT)
    async with cluster(2) as (a, b):
        member = a.membership.members[b.node_id]
        hb = a.parts.heartbeats
        sent: list[tuple[int, int]] = []  # (round, padding) of each ping a sends
        ping = hb._ping

        def spy(conn: Connection, pad: int = 0) -> Awaitable[None]:
            sent.append((hb.seq, pad))
            return ping(conn, pad)

        monkeypatch.setattr(hb, "_ping", spy)
        # A plain ping for the bare RTT, then probes.
        await wait_until(lambda: member.probed_at is not None, "a link probe came back")
        assert member.rtt is not None
        # Loopback crosses 128 KiB within the RTT's noise, so whether a probe there
        # yields a rate is luck: feed one as a 10 MB/s link would give it. A probe is
        # not an RTT sample: the RTT stays what plain pings measured.
        rtt = member.rtt
        a.membership.probed(
            b.node_id, member.probed_at, PROBE_BYTES, member.rtt + PROBE_BYTES / 10e6
        )
        assert member.rtt == rtt
        assert member.probed_bandwidth is not None
        bid = Bid("auc", b.node_id, 0.0, {"probe:conv:1": 0.01}, 1 << 30, 1e12, 0.0, 0.5)
        planned = a.measured_link(bid)
        assert planned.bandwidth == pytest.approx(member.probed_bandwidth)
        # Per transfer it still charges the per-tile overhead (the prior until tiles
        # have been served): a probe measures the link, not the hand-offs around it.
        assert member.overhead is None
        assert planned.rtt == pytest.approx(max(member.rtt, DEFAULT_TILE_OVERHEAD))
        # A node with work of its own in flight does not probe: the probe would time
        # its own traffic, not the link. Probes are due (no samples), rounds go by.
        member.probe_samples.clear()
        a.load.running_here += 1
        try:
            busy_from = hb.seq + 1
            await wait_until(lambda: hb.seq >= busy_from + 2, "three heartbeat rounds")
            while_busy = [pad for seq, pad in sent if seq >= busy_from]
            assert while_busy and not any(while_busy), "a probe went out while busy"
        finally:
            a.load.running_here -= 1
        # Idle again: probing resumes.
        idle_from = hb.seq + 1
        await wait_until(
            lambda: any(pad for seq, pad in sent if seq >= idle_from), "a probe once idle"
        )

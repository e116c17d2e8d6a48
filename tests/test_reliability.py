"""Peers failing mid-request, stragglers past their deadline, cancellation, overload."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path

import pytest

from edgeci_p2p.aio.client import Client, ClientError
from edgeci_p2p.aio.connection import connect
from edgeci_p2p.aio.tls import client_context
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import InferRequest
from edgeci_p2p.wire.session import SessionConfig
from tests.daemons import (
    IMAGE,
    assert_exact,
    client,
    cluster,
    occupy,
    peer_processes,
    reference,
    wait_until,
)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.one_loop
async def test_a_tile_past_its_deadline_is_reassigned_and_its_peer_banned() -> None:
    tight = {0: {"tile_deadline_factor": 1.0, "tile_deadline_margin": 0.3}}
    async with cluster(3, per_peer=tight) as daemons:
        auctioneer, slow = daemons[0], daemons[1]
        ref = reference()
        # Warm up so the slow peer wins strips (its bids are honest: it is idle now).
        async with client(auctioneer) as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert slow.node_id in r.plan["nodes"]
        blocker = await occupy(slow, 3.0)
        t0 = time.monotonic()
        async with client(auctioneer) as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert time.monotonic() - t0 < 3.0, "the request waited for the straggler"
        assert_exact(r.logits, ref)
        assert r.timing["retries"] >= 1  # type: ignore[operator]
        assert auctioneer.bans.banned(slow.node_id, time.monotonic())
        await blocker


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.one_loop
async def test_a_straggler_is_hedged_and_the_losing_copy_cancelled() -> None:
    async with cluster(3) as daemons:
        auctioneer, slow = daemons[0], daemons[1]
        ref = reference()
        async with client(auctioneer) as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert slow.node_id in r.plan["nodes"]
        blocker = await occupy(slow, 4.0)  # well past the hedge point, inside the deadline
        t0 = time.monotonic()
        async with client(auctioneer) as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert time.monotonic() - t0 < 4.0, "the request waited for the straggler"
        assert_exact(r.logits, ref)
        assert r.timing["hedges"] >= 1  # type: ignore[operator]
        deadline = time.monotonic() + 2
        while not slow.serving.cancelled_tiles and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert slow.serving.cancelled_tiles, "the straggling copy was not cancelled"
        await blocker
        await asyncio.sleep(0.2)
        assert slow.load.queued_tiles == 0  # the cancelled copies were skipped, not run


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_peer_dropping_its_connections_mid_request_loses_nothing() -> None:
    async with cluster(3) as daemons:
        ref = reference()
        victim = daemons[2]
        blocker = await occupy(victim, 0.5)

        async def drop_later() -> None:
            await asyncio.sleep(0.2)
            for conn in list(victim.conns.values()):
                await conn.close()

        async with client(daemons[0]) as c:
            r, _ = await asyncio.gather(
                c.infer(IMAGE, model="resnet34", strategy="modnn"), drop_later()
            )
        assert_exact(r.logits, ref)
        await blocker


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_client_disconnect_cancels_tiles_everywhere_and_releases_reservations() -> None:
    async with cluster(3) as daemons:
        blockers = [await occupy(d, 1.0) for d in daemons]
        rid = secrets.token_hex(8)
        me = Identity.generate("impatient")
        conn = await connect(
            "127.0.0.1",
            daemons[0].port,
            SessionConfig(me.node_id, role="client", identity=me),
            tls=client_context(),
        )
        await conn.send(InferRequest(rid, "resnet34", image=IMAGE, strategy="modnn"))
        await asyncio.sleep(0.5)  # auction done, tiles queued behind the blockers
        await conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all(rid in d.serving.cancelled for d in daemons):
                break
            await asyncio.sleep(0.05)
        assert all(rid in d.serving.cancelled for d in daemons)
        for b in blockers:
            await b
        await asyncio.sleep(0.3)
        for d in daemons:
            assert d.bidder is not None and rid not in d.bidder.ledger.active
            assert d.load.queued_tiles == 0 and d.load.requests == 0


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_beyond_capacity_gets_busy_instead_of_queueing() -> None:
    async with cluster(1, max_requests=1) as (d,):
        async with client(d) as c:
            results = await asyncio.gather(
                *(c.infer(IMAGE, model="resnet34") for _ in range(4)), return_exceptions=True
            )
        busy = [r for r in results if isinstance(r, ClientError)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert busy and done
        assert all(e.code == int(ErrorCode.BUSY) for e in busy)
        assert d.load.requests == 0


@pytest.mark.timeout(400)
def test_two_of_four_peers_sigkilled_with_six_requests_in_flight(tmp_path: Path) -> None:
    with peer_processes(tmp_path, 4, models="vgg16", ready_timeout=240) as peers:
        ref = reference("vgg16")

        async def run() -> list[object]:
            async with Client(peers[0].address) as c:

                async def all_alive() -> bool:
                    return sum(p["alive"] for p in await c.peers()) >= 4

                await wait_until(all_alive, "peers found each other", timeout=60, poll=0.3)
                jobs = [
                    asyncio.ensure_future(c.infer(IMAGE, model="vgg16", strategy=s))
                    for s in ("edgeci", "modnn", "edgeci-halo", "aofl", "edgeci-halo", "edgeld")
                ]
                await asyncio.sleep(0.8)
                assert not all(j.done() for j in jobs), "nothing was in flight"
                for p in peers[2:]:
                    os.kill(p.proc.pid, signal.SIGKILL)
                return list(await asyncio.gather(*jobs))

        results = asyncio.run(run())
        assert len(results) == 6
        for r in results:
            assert_exact(r.logits, ref)  # type: ignore[attr-defined]

"""Peers failing mid-request, stragglers past their deadline, cancellation, overload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from pathlib import Path

import pytest

from edgeci_p2p.aio.client import Client, ClientError
from edgeci_p2p.aio.connection import connect
from edgeci_p2p.aio.daemon import PeerDaemon
from edgeci_p2p.aio.tls import client_context
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import InferRequest
from edgeci_p2p.wire.session import SessionConfig
from tests.daemons import (
    EVERY_BID,
    IMAGE,
    LOOPBACK_MDNS,
    WAIT_S,
    assert_exact,
    blocked_worker,
    client,
    cluster,
    peer_processes,
    reference,
    wait_until,
)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.one_loop
async def test_a_tile_past_its_deadline_is_reassigned_and_its_peer_banned() -> None:
    tight = {0: {**EVERY_BID, "tile_deadline_factor": 1.0, "tile_deadline_margin": 0.3}}
    async with cluster(3, per_peer=tight) as daemons:
        auctioneer, slow = daemons[0], daemons[1]
        ref = reference()
        # Warm up so the slow peer wins strips (its bids are honest: it is idle now).
        async with client(auctioneer) as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert slow.node_id in r.plan["nodes"]
        auctioneer.bans.base = 3 * WAIT_S  # a ban that outlasts the test (1 s by default)
        with blocked_worker(slow) as worker:
            assert await asyncio.to_thread(worker.held.wait, WAIT_S)
            # Answered while the straggler's worker is still held: it did not wait for it.
            async with client(auctioneer) as c:
                r = await asyncio.wait_for(
                    c.infer(IMAGE, model="resnet34", strategy="modnn"), WAIT_S
                )
            assert_exact(r.logits, ref)
            assert r.timing["retries"] >= 1  # type: ignore[operator]
            assert auctioneer.bans.banned(slow.node_id, time.monotonic())


def tiles(d: PeerDaemon, outcome: str) -> float:
    """How many tiles ``d`` was given ended with ``outcome`` (its /metrics counter)."""
    got = d.node.metrics.registry.get_sample_value(
        "edgeci_tiles_total", {"kind": "tile", "outcome": outcome}
    )
    return got or 0.0


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.one_loop
async def test_a_straggler_is_hedged_and_the_losing_copy_cancelled() -> None:
    async with cluster(3, per_peer={0: EVERY_BID}) as daemons:
        auctioneer, slow = daemons[0], daemons[1]
        ref = reference()
        async with client(auctioneer) as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert slow.node_id in r.plan["nodes"]
        served = tiles(slow, "served")
        with blocked_worker(slow) as worker:
            assert await asyncio.to_thread(worker.held.wait, WAIT_S)
            # Answered while the straggler's worker is still held (the hedge comes at
            # 0.5 s past the prediction, the deadline at 2 s): it did not wait for it.
            async with client(auctioneer) as c:
                r = await asyncio.wait_for(
                    c.infer(IMAGE, model="resnet34", strategy="modnn"), WAIT_S
                )
            assert_exact(r.logits, ref)
            assert r.timing["hedges"] >= 1  # type: ignore[operator]
            await wait_until(
                lambda: slow.serving.cancelled_tiles, "the straggling copy was cancelled"
            )
            assert slow.load.queued_tiles >= 1  # still queued behind the held worker
        # Released, the worker skips the cancelled copies instead of running them.
        await wait_until(lambda: slow.load.queued_tiles == 0, "the cancelled copies left")
        assert tiles(slow, "cancelled") >= 1
        assert tiles(slow, "served") == served  # none of the held request's ran there


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_peer_dropping_its_connections_mid_request_loses_nothing() -> None:
    # No hedging or deadline on the auctioneer's side before the drop: what reaches the
    # request is the dropped connection alone.
    patient = {0: {**EVERY_BID, "hedge_margin": 3 * WAIT_S, "tile_deadline_margin": 3 * WAIT_S}}
    async with cluster(3, per_peer=patient) as daemons:
        ref = reference()
        victim = daemons[2]
        with blocked_worker(victim) as worker:
            assert await asyncio.to_thread(worker.held.wait, WAIT_S)
            async with client(daemons[0]) as c:
                job = asyncio.ensure_future(c.infer(IMAGE, model="resnet34", strategy="modnn"))
                # The victim holds tiles of the request, unanswered, when it drops out.
                await wait_until(
                    lambda: victim.load.queued_tiles or job.done(), "the victim has tiles"
                )
                assert not job.done(), f"answered without the victim: {job.result().plan}"
                for conn in list(victim.conns.values()):
                    await conn.close()
                worker.release()
                r = await asyncio.wait_for(job, WAIT_S)
        assert_exact(r.logits, ref)
        assert r.timing["retries"] >= 1  # type: ignore[operator]
        assert victim.node_id in r.plan["nodes"]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_client_disconnect_cancels_tiles_everywhere_and_releases_reservations() -> None:
    async with cluster(3) as daemons:
        with contextlib.ExitStack() as held:
            workers = [held.enter_context(blocked_worker(d)) for d in daemons]
            for w in workers:
                assert await asyncio.to_thread(w.held.wait, WAIT_S)
            rid = secrets.token_hex(8)
            me = Identity.generate("impatient")
            conn = await connect(
                "127.0.0.1",
                daemons[0].port,
                SessionConfig(me.node_id, role="client", identity=me),
                tls=client_context(),
            )
            await conn.send(InferRequest(rid, "resnet34", image=IMAGE, strategy="modnn"))
            # The auction is done and the peers' tiles are queued behind the held workers.
            await wait_until(
                lambda: all(d.load.queued_tiles for d in daemons[1:]), "tiles queued on the peers"
            )
            await conn.close()
            await wait_until(
                lambda: all(rid in d.serving.cancelled for d in daemons), "cancelled everywhere"
            )
            for w in workers:
                w.release()

            def all_released() -> bool:
                return all(
                    d.bidder is not None
                    and rid not in d.bidder.ledger.active
                    and d.load.queued_tiles == 0
                    and d.load.requests == 0
                    for d in daemons
                )

            await wait_until(all_released, "reservations released and queues empty")
        # The queued tiles were skipped once the workers were free, not run.
        for d in daemons[1:]:
            assert tiles(d, "cancelled") >= 1 and tiles(d, "served") == 0


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
@LOOPBACK_MDNS
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
                # Killed once a victim holds work of these requests (its own view says
                # so), not after a guessed delay.
                victims = [Client(p.address) for p in peers[2:]]
                async with contextlib.AsyncExitStack() as stack:
                    for v in victims:
                        await stack.enter_async_context(v)

                    async def a_victim_works() -> bool:
                        for v in victims:
                            me = next(p for p in await v.peers() if p.get("self"))
                            if me["load"]["queued"] or me["load"]["requests"]:
                                return True
                        return all(j.done() for j in jobs)

                    await wait_until(a_victim_works, "a victim has work", poll=0.02)
                assert not all(j.done() for j in jobs), "nothing was in flight"
                for p in peers[2:]:
                    os.kill(p.proc.pid, signal.SIGKILL)
                return list(await asyncio.gather(*jobs))

        results = asyncio.run(run())
        assert len(results) == 6
        for r in results:
            assert_exact(r.logits, ref)  # type: ignore[attr-defined]

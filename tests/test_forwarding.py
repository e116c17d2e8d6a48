"""A busy entry peer passes a stream's frames on to idle peers (whole frames), relays
their answers under the client's request ids, and runs a frame itself when the peer
it chose fails or is too slow."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.daemons import IMAGE, WAIT_S, assert_exact, blocked_worker, client, cluster, reference


@pytest.mark.asyncio
@pytest.mark.timeout(180)
@pytest.mark.one_loop
async def test_a_busy_entry_forwards_frames_to_idle_peers_exactly() -> None:
    async with cluster(3) as daemons:
        entry = daemons[0]
        ref = reference()
        async with client(entry) as c:
            await c.infer(IMAGE, model="resnet34")  # the bids tell the entry each speed
            assert len(entry.parts.desk.probe_s) == 3
            results = await asyncio.gather(*(c.infer(IMAGE, model="resnet34") for _ in range(6)))
        for r in results:
            assert_exact(r.logits, ref)
            assert r.strategy == "edgeci"
        answered_by = {r.plan["nodes"][r.plan["auctioneer"]] for r in results}
        assert answered_by - {entry.node_id}, "no frame was passed on"
        assert any(r.plan["notes"].get("decision") == "forwarded: whole here" for r in results)
        assert not entry.forwarder.answers and not any(entry.forwarder.in_flight.values())


@pytest.mark.asyncio
@pytest.mark.timeout(180)
@pytest.mark.one_loop
async def test_a_forward_that_times_out_runs_on_the_entry() -> None:
    async with cluster(3, per_peer={0: {"forward_timeout": 0.5}}) as daemons:
        entry = daemons[0]
        ref = reference()
        async with client(entry) as c, contextlib.AsyncExitStack() as stall:
            await c.infer(IMAGE, model="resnet34")
            # Both peers stall (their workers held until the end: nothing they were
            # forwarded can finish before the forward timeout, whatever the load).
            for d in daemons[1:]:
                held = stall.enter_context(blocked_worker(d))
                assert await asyncio.to_thread(held.held.wait, WAIT_S)
            results = await asyncio.gather(*(c.infer(IMAGE, model="resnet34") for _ in range(3)))
        for r in results:
            assert_exact(r.logits, ref)
            assert r.plan["nodes"][r.plan["auctioneer"]] == entry.node_id


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_strategies_other_than_ours_are_not_forwarded() -> None:
    async with cluster(2) as daemons:
        entry = daemons[0]
        async with client(entry) as c:
            await c.infer(IMAGE, model="resnet34")
            results = await asyncio.gather(
                *(c.infer(IMAGE, model="resnet34", strategy="local") for _ in range(3))
            )
        for r in results:
            assert r.plan["nodes"][r.plan["auctioneer"]] == entry.node_id

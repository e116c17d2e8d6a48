"""Peers failing mid-request, stragglers past their deadline, cancellation, overload."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_daemon import start_cluster, stop_all, wait_connected

from edgeci_p2p.aio.client import Client, ClientError
from edgeci_p2p.aio.connection import connect
from edgeci_p2p.aio.daemon import PeerConfig, PeerDaemon
from edgeci_p2p.demo import ready_port, start_peer
from edgeci_p2p.nn.images import decode, sample_image_path, to_input
from edgeci_p2p.nn.runtime import shared_model
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import InferRequest
from edgeci_p2p.wire.session import SessionConfig

IMAGE = sample_image_path().read_bytes()


def reference(model: str = "resnet34") -> torch.Tensor:
    with torch.no_grad():
        return shared_model(model).module(to_input(decode(IMAGE), "224"))  # type: ignore[no-any-return]


def assert_exact(logits: object, ref: torch.Tensor) -> None:
    got = torch.from_numpy(np.array(logits, dtype=np.float32)).reshape(ref.shape)
    torch.testing.assert_close(got, ref)


async def occupy(d: PeerDaemon, seconds: float) -> asyncio.Future[None]:
    """Make ``d`` a straggler: its tile worker sleeps before reaching any tile."""
    fut = asyncio.get_running_loop().run_in_executor(d.worker, time.sleep, seconds)
    await asyncio.sleep(0.02)
    return fut


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_tile_past_its_deadline_is_reassigned_and_its_peer_banned() -> None:
    daemons = await start_cluster(3, ["resnet34"])
    auctioneer, slow = daemons[0], daemons[1]
    auctioneer.config.tile_deadline_factor = 1.0
    auctioneer.config.tile_deadline_margin = 0.3
    try:
        await wait_connected(daemons)
        ref = reference()
        # Warm up so the slow peer wins strips (its bids are honest: it is idle now).
        async with Client(f"127.0.0.1:{auctioneer.port}") as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert slow.node_id in r.plan["nodes"]
        blocker = await occupy(slow, 3.0)
        t0 = time.monotonic()
        async with Client(f"127.0.0.1:{auctioneer.port}") as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert time.monotonic() - t0 < 3.0, "the request waited for the straggler"
        assert_exact(r.logits, ref)
        assert r.timing["retries"] >= 1  # type: ignore[operator]
        assert auctioneer._bans.banned(slow.node_id, time.monotonic())
        await blocker
    finally:
        await stop_all(daemons)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_straggler_is_hedged_and_the_losing_copy_cancelled() -> None:
    daemons = await start_cluster(3, ["resnet34"])
    auctioneer, slow = daemons[0], daemons[1]
    try:
        await wait_connected(daemons)
        ref = reference()
        async with Client(f"127.0.0.1:{auctioneer.port}") as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert slow.node_id in r.plan["nodes"]
        blocker = await occupy(slow, 4.0)  # well past the hedge point, inside the deadline
        t0 = time.monotonic()
        async with Client(f"127.0.0.1:{auctioneer.port}") as c:
            r = await c.infer(IMAGE, model="resnet34", strategy="modnn")
        assert time.monotonic() - t0 < 4.0, "the request waited for the straggler"
        assert_exact(r.logits, ref)
        assert r.timing["hedges"] >= 1  # type: ignore[operator]
        deadline = time.monotonic() + 2
        while not slow._cancelled_tiles and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert slow._cancelled_tiles, "the straggling copy was not cancelled"
        await blocker
        await asyncio.sleep(0.2)
        assert slow._queued_tiles == 0  # the cancelled copies were skipped, not run
    finally:
        await stop_all(daemons)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_peer_dropping_its_connections_mid_request_loses_nothing() -> None:
    daemons = await start_cluster(3, ["resnet34"])
    try:
        await wait_connected(daemons)
        ref = reference()
        victim = daemons[2]
        blocker = await occupy(victim, 0.5)

        async def drop_later() -> None:
            await asyncio.sleep(0.2)
            for conn in list(victim.conns.values()):
                await conn.close()

        async with Client(f"127.0.0.1:{daemons[0].port}") as c:
            r, _ = await asyncio.gather(
                c.infer(IMAGE, model="resnet34", strategy="modnn"), drop_later()
            )
        assert_exact(r.logits, ref)
        await blocker
    finally:
        await stop_all(daemons)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_client_disconnect_cancels_tiles_everywhere_and_releases_reservations() -> None:
    daemons = await start_cluster(3, ["resnet34"])
    try:
        await wait_connected(daemons)
        blockers = [await occupy(d, 1.0) for d in daemons]
        rid = secrets.token_hex(8)
        conn = await connect(
            "127.0.0.1", daemons[0].port, SessionConfig("impatient", role="client")
        )
        await conn.send(InferRequest(rid, "resnet34", image=IMAGE, strategy="modnn"))
        await asyncio.sleep(0.5)  # auction done, tiles queued behind the blockers
        await conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all(rid in d._cancelled for d in daemons):
                break
            await asyncio.sleep(0.05)
        assert all(rid in d._cancelled for d in daemons)
        for b in blockers:
            await b
        await asyncio.sleep(0.3)
        for d in daemons:
            assert d.bidder is not None and rid not in d.bidder.ledger.active
            assert d._queued_tiles == 0 and d._requests == 0
    finally:
        await stop_all(daemons)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_beyond_capacity_gets_busy_instead_of_queueing() -> None:
    d = PeerDaemon(
        PeerConfig(host="127.0.0.1", port=0, no_mdns=True, models=["resnet34"], max_requests=1)
    )
    await d.start()
    try:
        async with Client(f"127.0.0.1:{d.port}") as c:
            results = await asyncio.gather(
                *(c.infer(IMAGE, model="resnet34") for _ in range(4)), return_exceptions=True
            )
        busy = [r for r in results if isinstance(r, ClientError)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert busy and done
        assert all(e.code == int(ErrorCode.BUSY) for e in busy)
        assert d._requests == 0
    finally:
        await asyncio.wait_for(d.stop(), 15)


@pytest.mark.timeout(400)
def test_two_of_four_peers_sigkilled_with_six_requests_in_flight(tmp_path: Path) -> None:
    env = {"EDGECI_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        start_peer(str(tmp_path / f"p{i}"), f"p{i}", models="vgg16", env=env) for i in range(4)
    ]
    try:
        ports = [ready_port(p, 240) for p in procs]
        entry = f"127.0.0.1:{ports[0]}"
        ref = reference("vgg16")

        async def run() -> list[object]:
            async with Client(entry) as c:
                deadline = time.monotonic() + 60
                while sum(p["alive"] for p in await c.peers()) < 4:
                    assert time.monotonic() < deadline, "peers did not find each other"
                    await asyncio.sleep(0.3)
                jobs = [
                    asyncio.ensure_future(c.infer(IMAGE, model="vgg16", strategy=s))
                    for s in ("edgeci", "modnn", "edgeci-halo", "aofl", "edgeci-halo", "edgeld")
                ]
                await asyncio.sleep(0.8)
                assert not all(j.done() for j in jobs), "nothing was in flight"
                for p in procs[2:]:
                    os.kill(p.pid, signal.SIGKILL)
                return list(await asyncio.gather(*jobs))

        results = asyncio.run(run())
        assert len(results) == 6
        for r in results:
            assert_exact(r.logits, ref)  # type: ignore[attr-defined]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except Exception:
                p.kill()

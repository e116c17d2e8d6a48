"""Integration: daemons in one process on 127.0.0.1, answers equal the unsplit model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import torch

from edgeci_p2p.aio.client import Client, ClientError
from edgeci_p2p.aio.daemon import STRATEGIES, PeerConfig, PeerDaemon
from edgeci_p2p.nn.images import decode, sample_image_path, to_input
from edgeci_p2p.nn.models import load_model

MODELS = ["resnet34"]


async def _wait_connected(daemons: list[PeerDaemon], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(d.membership.alive(time.monotonic())) == len(daemons) - 1 for d in daemons):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("daemons did not see each other")


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[list[PeerDaemon]]:
    first = PeerDaemon(PeerConfig(host="127.0.0.1", port=0, no_mdns=True, models=MODELS))
    await first.start()
    others = [
        PeerDaemon(
            PeerConfig(
                host="127.0.0.1",
                port=0,
                no_mdns=True,
                models=MODELS,
                peers=[("127.0.0.1", first.port)],
            )
        )
        for _ in range(2)
    ]
    for d in others:
        await d.start()
    daemons = [first, *others]
    try:
        await _wait_connected(daemons)
        yield daemons
    finally:
        for d in daemons:
            await asyncio.wait_for(d.stop(), 15)


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_three_peers_answer_exactly_under_every_strategy(cluster: list[PeerDaemon]) -> None:
    data = sample_image_path().read_bytes()
    ref_model = load_model("resnet34").module
    for size in ("224", "native"):
        x = to_input(decode(data), size)
        with torch.no_grad():
            ref = ref_model(x).numpy()
        for i, strategy in enumerate(STRATEGIES):
            entry = cluster[i % len(cluster)]
            async with Client(f"127.0.0.1:{entry.port}") as c:
                r = await asyncio.wait_for(
                    c.infer(data, model="resnet34", strategy=strategy, size=size), 60
                )
            got = np.asarray(r.logits).reshape(ref.shape)
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(ref))
            assert r.strategy == strategy and len(r.top_k) == 5
            assert r.plan["strategy"] == strategy


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_peers_view_and_bad_requests(cluster: list[PeerDaemon]) -> None:
    async with Client(f"127.0.0.1:{cluster[0].port}") as c:
        peers = await c.peers()
        assert {p["id"] for p in peers} == {d.node_id for d in cluster}
        assert all(p["alive"] for p in peers)
        with pytest.raises(ClientError, match="not served"):
            await c.infer(b"\x89PNG....", model="vgg16")
        with pytest.raises(ClientError, match="cannot decode"):
            await c.infer(b"not an image", model="resnet34")
        with pytest.raises(ClientError, match="unknown strategy"):
            await c.infer(sample_image_path().read_bytes(), model="resnet34", strategy="magic")
        # The connection still serves after the errors.
        assert len(await c.peers()) == 3


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_heartbeat_answered_while_a_tile_computes(cluster: list[PeerDaemon]) -> None:
    d = cluster[1]
    assert d.store is not None
    busy = asyncio.get_running_loop().run_in_executor(d.worker, time.sleep, 1.0)
    await asyncio.sleep(0.05)
    conn = cluster[0].conns[d.node_id]
    from edgeci_p2p.wire.messages import Ping

    before = cluster[0].membership.members[d.node_id].last_heartbeat
    t0 = time.monotonic()
    await conn.send(Ping(999, time.monotonic()))
    while cluster[0].membership.members[d.node_id].last_heartbeat == before:
        await asyncio.sleep(0.005)
    assert time.monotonic() - t0 < 0.05
    await busy

"""Integration: daemons in one process on 127.0.0.1; answers equal the unsplit model."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from edgeci_p2p.aio.client import ClientError
from edgeci_p2p.aio.daemon import PeerConfig, PeerDaemon
from edgeci_p2p.core.membership import DuplicateNodeError
from edgeci_p2p.nn.images import sample_image_path
from edgeci_p2p.nn.models import load_model
from edgeci_p2p.planners import STRATEGIES
from edgeci_p2p.wire.identity import Identity, node_id_of
from edgeci_p2p.wire.messages import Ping
from tests.daemons import (
    WAIT_S,
    client,
    cluster,
    reference,
    wait_connected,
    wait_until,
)

MODELS = ["resnet34", "vgg16"]


def small_nonsquare_png() -> bytes:
    """The sample photo shrunk to 257x193 (odd, non-square): cheap at native size."""
    img = Image.open(sample_image_path()).convert("RGB").resize((257, 193))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest_asyncio.fixture(name="cluster")
async def three_peers() -> AsyncIterator[list[PeerDaemon]]:
    async with cluster(3, models=MODELS) as daemons:
        yield daemons


@pytest.mark.asyncio
@pytest.mark.one_loop
@pytest.mark.timeout(600)
async def test_every_strategy_model_and_size_is_exact(cluster: list[PeerDaemon]) -> None:
    images = {"224": sample_image_path().read_bytes(), "native": small_nonsquare_png()}
    for model in MODELS:
        for size, image in images.items():
            ref = reference(model, image, size)
            for i, strategy in enumerate(STRATEGIES):
                entry = cluster[i % len(cluster)]  # any peer takes a request
                async with client(entry) as c:
                    r = await asyncio.wait_for(
                        c.infer(image, model=model, strategy=strategy, size=size), 120
                    )
                got = torch.from_numpy(np.array(r.logits)).reshape(ref.shape)
                torch.testing.assert_close(got, ref)
                assert r.strategy == strategy and r.plan["strategy"] == strategy
                assert [t.index for t in r.top_k] == ref.reshape(-1).topk(5).indices.tolist()
                # The receiver is the auctioneer: it holds the input and runs the head.
                assert r.plan["nodes"][r.plan["auctioneer"]] == entry.node_id
                # What it was planned for: this input's size, its pixels a byte a value
                # (benchmarks/plan_bound.py plans the same bytes again from a trace).
                planned = r.plan["planned_spec"]
                assert planned["input_shape"][1:] == ([224, 224] if size == "224" else [193, 257])
                assert planned["input_itemsize"] == 1


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_overlapping_requests_on_one_connection(cluster: list[PeerDaemon]) -> None:
    image = small_nonsquare_png()
    ref = reference("resnet34", image, "native")
    async with client(cluster[1]) as c:
        results = await asyncio.gather(
            *(c.infer(image, model="resnet34", size="native") for _ in range(4))
        )
    for r in results:
        torch.testing.assert_close(torch.from_numpy(np.array(r.logits)).reshape(ref.shape), ref)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_peers_view_and_bad_requests(cluster: list[PeerDaemon]) -> None:
    async with client(cluster[0]) as c:
        peers = await c.peers()
        assert {p["id"] for p in peers} == {d.node_id for d in cluster}
        assert all(p["alive"] for p in peers)
        with pytest.raises(ClientError, match="not served"):
            await c.infer(sample_image_path().read_bytes(), model="resnet18")
        with pytest.raises(ClientError, match="cannot decode"):
            await c.infer(b"not an image", model="resnet34")
        # A truncated JPEG: its header gives the size, so it is planned (an auction over
        # the three peers) while it decodes, and then fails to decode: an error reply,
        # its reservations cancelled, and the cluster serves the next request.
        truncated = sample_image_path().read_bytes()[:2000]
        with pytest.raises(ClientError, match="cannot decode"):
            await c.infer(truncated, model="vgg16", strategy="edgeci")
        with pytest.raises(ClientError, match="unknown strategy"):
            await c.infer(sample_image_path().read_bytes(), model="resnet34", strategy="magic")
        plan = await c.plan("vgg16", "edgeci")
        assert plan["plan"]["model"] == "vgg16" and len(plan["nodes"]) == 3
        # The connection still serves after the errors.
        assert len(await c.peers()) == 3


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_heartbeat_answered_while_a_tile_computes(
    cluster: list[PeerDaemon],
) -> None:
    """The loop answers a ping while the tile worker computes: the pong comes back
    before a whole VGG-16 forward (seconds) on b's worker is done, not after it."""
    a, b = cluster[0], cluster[1]
    assert b.store is not None
    store = b.store
    x = torch.randn(1, 3, 224, 224)
    started = threading.Event()

    def tile() -> object:
        started.set()
        return store.forward("vgg16", x)

    busy = asyncio.get_running_loop().run_in_executor(b.worker, tile)
    assert await asyncio.to_thread(started.wait, WAIT_S), "the worker never started"
    member = a.membership.members[b.node_id]
    before = member.last_heartbeat
    await a.conns[b.node_id].send(Ping(999, time.monotonic()))
    while member.last_heartbeat == before and not busy.done():
        await asyncio.sleep(0.002)
    assert member.last_heartbeat != before, "no pong"
    assert not busy.done(), "the pong came only after the tile finished"
    await busy


@pytest.mark.asyncio
@pytest.mark.timeout(180)
@pytest.mark.one_loop
async def test_peer_with_different_weights_gets_no_work(tmp_path: Path) -> None:
    other = load_model("resnet34", use_hub_cache=False, seed=7)
    path = tmp_path / "resnet34-other.pth"
    torch.save(other.module.state_dict(), path)
    async with cluster(3, per_peer={1: {"weights": {"resnet34": str(path)}}}) as daemons:
        odd = daemons[1]
        image = sample_image_path().read_bytes()
        ref = reference("resnet34", image, "224")
        for strategy in ("edgeci", "modnn"):
            async with client(daemons[0]) as c:
                r = await c.infer(image, model="resnet34", strategy=strategy)
            assert odd.node_id not in r.plan["nodes"]
            assert odd.node_id not in r.timing["compute"]  # type: ignore[operator]
            torch.testing.assert_close(torch.from_numpy(np.array(r.logits)).reshape(ref.shape), ref)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The peers' log lines so far that contain ``text``."""
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_duplicate_node_id_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = PeerDaemon(PeerConfig(host="127.0.0.1", port=0, no_mdns=True, state_dir=tmp_path))
    with pytest.raises(DuplicateNodeError, match="same node id"):
        PeerDaemon(PeerConfig(host="127.0.0.1", port=0, no_mdns=True, state_dir=tmp_path))
    # The id persists across restarts of the same state dir.
    node_id = first.node_id
    first._lock_file.close()
    again = PeerDaemon(PeerConfig(host="127.0.0.1", port=0, no_mdns=True, state_dir=tmp_path))
    assert again.node_id == node_id
    again._lock_file.close()
    # The id is made from the key pair kept there (the key readable by its owner only).
    assert node_id == node_id_of(again.identity.cert_der)
    assert (tmp_path / "tls_key.pem").stat().st_mode & 0o077 == 0
    # A remote peer presenting our own id (so our own key pair) is refused too.
    caplog.set_level(logging.WARNING, logger="edgeci.peer")
    same = Identity.generate()
    async with cluster(2, identities=[same, same], wait=False) as (a, b):
        # Each side has met the other and refused it (not merely not met it yet).
        await wait_until(
            lambda: all(
                any(f":{d.port} presents our own node id" in m for m in logged(caplog, "our own"))
                for d in (a, b)
            ),
            "both peers refused the other",
        )
        assert not a.membership.members and not b.membership.members


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_cluster_key_admits_members_and_refuses_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edgeci.peer")
    key = b"correct horse battery staple 42"
    outsider = {2: {"cluster_key": None}}
    async with cluster(3, cluster_key=key, per_peer=outsider, wait=False) as daemons:
        a, member, _ = daemons
        await wait_connected([a, member])
        # The outsider has dialled and been refused (not merely not dialled yet).
        await wait_until(
            lambda: logged(caplog, "the peer has none [AUTH_REQUIRED"), "the outsider refused"
        )
        assert set(a.membership.members) == {member.node_id}
        async with client(a, key=key) as c:
            r = await c.infer(sample_image_path().read_bytes(), model="resnet34")
        assert set(r.plan["nodes"]) <= {a.node_id, member.node_id}
        with pytest.raises(Exception, match=r"(?i)auth|closed|refused"):
            async with client(a) as c:
                await c.peers()

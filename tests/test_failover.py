"""A client whose entry peer dies mid-request gets its answer from another peer, once;
a re-sent request that a peer had finished is answered from its memory."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import io
import threading
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edgeci_p2p.aio.client import Client, parse_addresses
from edgeci_p2p.policy.answered import AnsweredMemory, answer_key
from edgeci_p2p.stream.pipeline import FrameResult
from edgeci_p2p.wire.messages import InferRequest
from tests.daemons import (
    HOST,
    IMAGE,
    address,
    assert_exact,
    blocked_worker,
    cluster,
    crash,
    reference,
    wait_until,
)


def test_addresses_repeated_or_comma_separated() -> None:
    assert parse_addresses(["a:1,b:2", "c:3", "a:1"]) == [("a", 1), ("b", 2), ("c", 3)]
    assert parse_addresses("h") == [("h", 7420)]
    with pytest.raises(ValueError):
        Client([])


def test_infer_takes_several_peers_or_mdns() -> None:
    from edgeci_p2p import cli
    from edgeci_p2p.commands.infer import client_of

    args = cli.build_parser().parse_args(
        ["infer", "--peer", "h1:7421,h2:7422", "--peer", "h3:7423", "photo.jpg"]
    )
    assert client_of(args, None).addresses == [("h1", 7421), ("h2", 7422), ("h3", 7423)]
    args = cli.build_parser().parse_args(["infer", "--mdns-interface", HOST, "photo.jpg"])
    assert client_of(args, None).mdns_interfaces == [HOST]
    with pytest.raises(ValueError, match="--peer"):
        client_of(cli.build_parser().parse_args(["infer", "photo.jpg"]), None)


def test_memory_is_keyed_by_id_and_content_bounded_and_forgets() -> None:
    req = InferRequest("r1", "resnet34", image=b"png")
    mem: AnsweredMemory[str] = AnsweredMemory(size=2, ttl=10.0)
    mem.remember(answer_key(req), "answer", now=0.0)
    # The same id with other content (another client's "r1") is not this answer.
    assert mem.recall(answer_key(dataclasses.replace(req, image=b"jpg")), 1.0) is None
    assert mem.recall(answer_key(dataclasses.replace(req, top_k=3)), 1.0) is None
    # A forward of it (``r1@suffix``, one hop) is the same request.
    fwd = dataclasses.replace(req, request_id="r1@9f3a", hops=1)
    assert mem.recall(answer_key(fwd), 1.0) == "answer"
    assert mem.recall(answer_key(req), 10.0) == "answer"
    assert mem.recall(answer_key(req), 10.5) is None  # older than ttl
    for i in range(3):
        mem.remember(answer_key(dataclasses.replace(req, request_id=f"x{i}")), str(i), 20.0)
    x0 = answer_key(dataclasses.replace(req, request_id="x0"))
    assert len(mem) == 2 and mem.recall(x0, 20.0) is None


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.one_loop
async def test_entry_peer_killed_mid_request_answer_comes_from_another_peer() -> None:
    ref = reference()
    async with cluster(2) as (entry, other):
        async with Client([address(entry), address(other)]) as c:
            with blocked_worker(entry) as worker:
                assert await asyncio.to_thread(worker.held.wait, 30)
                # "local" runs on the entry peer's (held) worker: the request is there,
                # unanswered, when the entry peer dies.
                task = asyncio.ensure_future(c.infer(IMAGE, strategy="local"))
                await wait_until(lambda: entry.front.answering, "the entry peer has the request")
                (rid,) = entry.front.answering
                await crash(entry, then=worker.release)
                result = await asyncio.wait_for(task, 60)
        assert result.request_id == rid
        assert_exact(result.logits, ref)
        assert result.plan["nodes"] == [other.node_id]
        assert (c.failovers, c.resent) == (1, 1)
        assert other.load.from_memory == 0  # it had not answered it: it ran it


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_resent_request_that_finished_is_answered_from_memory() -> None:
    async with cluster(1) as (d,):
        # The entry peer forwarded it here and died before relaying the answer...
        fwd = InferRequest("frame-7@1a2b", "resnet34", image=IMAGE, strategy="local", hops=1)
        first = await d.infer(fwd)
        # ...so the client sends it again, same id, to this peer.
        again = await d.infer(dataclasses.replace(fwd, request_id="frame-7", hops=0))
        assert d.load.from_memory == 1
        assert again.request_id == "frame-7"
        np.testing.assert_array_equal(np.asarray(again.logits), np.asarray(first.logits))
        # Another client's "frame-7" (another input) runs: never someone else's answer.
        x = np.zeros((1, 3, 64, 64), dtype=np.float32)
        other = await d.infer(InferRequest("frame-7", "resnet34", tensor=x, strategy="local"))
        assert d.load.from_memory == 1
        assert not np.array_equal(np.asarray(other.logits), np.asarray(first.logits))


def load_camera_example() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "examples" / "camera_pipeline.py"
    spec = importlib.util.spec_from_file_location("camera_pipeline_failover", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.asyncio
@pytest.mark.timeout(180)
@pytest.mark.one_loop
async def test_camera_pipeline_streams_through_its_entry_peers_death() -> None:
    example = load_camera_example()
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(60)

    async with cluster(2) as (entry, other):
        peers = f"{address(entry)},{address(other)}"
        args = example.build_parser().parse_args(
            ["--peer", peers, "--frames", "5", "--in-flight", "2", "--strategy", "local"]
        )
        frames: list[FrameResult] = []

        def shown(frame: FrameResult) -> None:
            frames.append(frame)
            if frame.index == 0:  # the entry's worker is held after what it has queued
                entry.worker.submit(hold)

        try:
            run = asyncio.ensure_future(example.run(args, io.StringIO(), io.StringIO(), shown))
            # The entry peer dies with frames it cannot finish in flight.
            await wait_until(
                lambda: started.is_set() and entry.front.answering, "a frame stuck on the entry"
            )
            await crash(entry, then=gate.set)
            summary = await asyncio.wait_for(run, 120)
        finally:
            gate.set()
    assert [f.index for f in frames] == [0, 1, 2, 3, 4] and summary.frames == 5
    assert frames[0].result.plan["nodes"] == [entry.node_id]
    assert frames[-1].result.plan["nodes"] == [other.node_id]

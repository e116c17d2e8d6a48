"""The head on the plan's head device, through real daemons: exact logits, a refusal
that leaves the head on the auctioneer (and bans the peer), and a head job with the
wrong map refused."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
import torch

from edgeci_p2p.aio.daemon import PeerDaemon, RequestError
from edgeci_p2p.core.plan import Plan, single_stage, validate
from edgeci_p2p.nn.images import decode, to_input
from edgeci_p2p.nn.runtime import shared_model
from edgeci_p2p.policy.tile_ids import HEAD_TILE_ID
from edgeci_p2p.wire.messages import HeadJob
from edgeci_p2p.wire.tensors import payload_nbytes
from tests.daemons import IMAGE, WAIT_S, assert_exact, cluster, reference, run_plan
from tests.planfakes import moving_plan


def last_map() -> np.ndarray:
    """ResNet-34's map before its head, for the test image."""
    module = shared_model("resnet34").module
    with torch.no_grad():
        features = torch.nn.Sequential(*list(module.children())[:-2])
        return features(to_input(decode(IMAGE), "224")).numpy()  # type: ignore[no-any-return]


def alone_then_head_on(d: PeerDaemon, nodes: list[str], head: int) -> Plan:
    """Every unit on the auctioneer (device 0), the head on device ``head``."""
    assert d.store is not None
    spec = d.store.spec("resnet34", 224, 224)
    stages = (single_stage(spec, 0, spec.n_units, 0),)
    plan = Plan(spec.name, "edgeci", "test", tuple(nodes), stages, 0, head_device=head)
    validate(plan, spec)
    return plan


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_the_head_runs_on_the_plans_head_device_and_the_logits_are_exact() -> None:
    async with cluster(3) as daemons:
        nodes = [d.node_id for d in daemons]
        logits, timing = await run_plan(daemons[0], alone_then_head_on(daemons[0], nodes, 2), "h1")
        assert_exact(logits, reference())
        assert timing["retries"] == 0
        # Only the head ran on node 2; the last map went there, the logits came back.
        assert set(timing["compute"]) == {nodes[0], nodes[2]}  # type: ignore[arg-type]
        # (the map as it crossed: zero-suppressed, docs/protocol.md 5.4)
        assert timing["bytes"] == payload_nbytes(last_map()) + 1000 * 4
        assert timing["bytes"] < 512 * 7 * 7 * 4
        # The same with strips that end on all three peers first.
        spec = daemons[0].store.spec("resnet34", 224, 224)  # type: ignore[union-attr]
        halo = dataclasses.replace(moving_plan(spec, nodes), head_device=1)
        logits, timing = await run_plan(daemons[0], halo, "h2")
        assert_exact(logits, reference())
        assert timing["retries"] == 0
        assert not daemons[1].replies and not daemons[0].replies


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_a_head_device_that_refuses_leaves_the_head_on_the_auctioneer() -> None:
    async with cluster(2) as daemons:
        nodes = [d.node_id for d in daemons]
        daemons[1].config.max_queued_tiles = 0  # it answers every job with "busy"
        # A ban that outlasts the test (1 s by default, which a loaded machine can spend
        # between the two requests below).
        daemons[0].bans.base = 3 * WAIT_S
        plan = alone_then_head_on(daemons[0], nodes, 1)
        logits, timing = await run_plan(daemons[0], plan, "h3")
        assert_exact(logits, reference())
        assert timing["retries"] == 1
        assert set(timing["compute"]) == {nodes[0]}  # type: ignore[arg-type]
        # Banned like a failed tile: the same plan again runs the head here at once.
        assert daemons[0].bans.banned(nodes[1], time.monotonic())
        logits, timing = await run_plan(daemons[0], plan, "h4")
        assert_exact(logits, reference())
        assert timing["retries"] == 0 and set(timing["compute"]) == {nodes[0]}  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_a_head_job_with_the_wrong_map_is_refused_and_the_peer_serves_on() -> None:
    async with cluster(2) as daemons:
        a, b = daemons
        fp = a.store.get("resnet34").fingerprint  # type: ignore[union-attr]
        for rid, x in (
            ("bad", np.zeros((1, 256, 7, 7), np.float32)),  # not ResNet-34's last map
            ("good", np.ones((1, 512, 7, 7), np.float32)),
        ):
            with a.replies.awaiting((rid, HEAD_TILE_ID), b.node_id) as fut:
                await a.conns[b.node_id].send(HeadJob(rid, HEAD_TILE_ID, "resnet34", fp, x))
                if rid == "bad":
                    with pytest.raises(RequestError, match="last map"):
                        await asyncio.wait_for(fut, 30)
                else:
                    res = await asyncio.wait_for(fut, 30)
                    assert res.output.shape == (1, 1000, 1, 1)
        assert b.node_id in a.conns  # the connection stayed up

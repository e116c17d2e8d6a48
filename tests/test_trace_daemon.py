"""A traced request's timeline, through live daemons: its spans cover the latency the
auctioneer measured, every tile of its plan appears on the node that ran it, peers'
spans are moved onto the auctioneer's clock, and the plan's predictions ride along."""

from __future__ import annotations

import numpy as np
import pytest

from edgeci_p2p.core.plan import Plan, segments
from edgeci_p2p.core.timeline import Timeline
from edgeci_p2p.nn.images import decode, to_input
from edgeci_p2p.policy.tile_ids import GatherTile, strip_job_id
from edgeci_p2p.wire.messages import InferRequest
from tests.daemons import IMAGE, cluster, wait_until

pytestmark = pytest.mark.asyncio


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["modnn", "edgeci-halo"])
async def test_a_traced_request_accounts_for_its_time_and_every_tile(strategy: str) -> None:
    async with cluster(3) as daemons:
        a = daemons[0]
        others = {d.node_id for d in daemons[1:]}
        # Each peer's clock offset comes from heartbeats: wait for one round trip each.
        await wait_until(lambda: all(a.started.offset(n) for n in others), "clock offsets")
        x = to_input(decode(IMAGE), "224").numpy()
        res = await a.infer(InferRequest("t1", "resnet34", tensor=x, strategy=strategy, trace=True))
        assert res.trace is not None
        tl = Timeline.from_dict(res.trace)
        total = float(res.timing["total"])  # type: ignore[arg-type]
        # The auctioneer's spans cover what it measured, within 5%, and end with it.
        assert tl.covered(a.node_id) >= 0.95 * total, (tl.covered(a.node_id), total)
        assert tl.end <= total * 1.05 + 0.005
        plan = Plan.from_dict(res.plan)
        nodes = res.plan["nodes"]
        halo = {si for first, last in segments(plan) if first < last for si in (first, last)}
        for si, st in enumerate(plan.stages):
            if si in halo or any(f < si < lst for f, lst in segments(plan)):
                continue  # strip jobs: their spans are the peers' own (below)
            for pi, part in enumerate(st.parts):
                node = nodes[part.device]
                got = [s for s in tl.spans if s.tile == GatherTile(si, pi).base and s.node == node]
                assert any(s.name == "compute" for s in got), (si, pi, node)
        for first, last in segments(plan):
            if first < last:  # a halo segment: every strip job's peer computed in it
                for d in plan.stages[first].devices:
                    tile = strip_job_id(first, d)
                    assert any(s.tile == tile and s.node == nodes[d] and s.name == "compute"
                               for s in tl.spans), (first, d)  # fmt: skip
        # Peers' spans are on the auctioneer's clock: each remote compute lies inside the
        # auctioneer's wait for it (to within the offsets' error bounds).
        for s in tl.spans:
            if s.node != a.node_id and s.name == "compute" and s.lane == "compute":
                err = tl.offsets[s.node].error + 0.002
                waits = [w for w in tl.spans if w.node == a.node_id and w.name == "wait"
                         and w.tile == s.tile]  # fmt: skip
                assert any(w.start - err <= s.start and s.stop <= w.stop + err for w in waits), s
        # Distributed work was traced on at least one other node, with predictions.
        assert {s.node for s in tl.spans} - {a.node_id}
        assert any(s.predicted is not None for s in tl.spans if s.name == "compute")
        assert np.all(np.isfinite(res.logits))


@pytest.mark.timeout(120)
async def test_an_untraced_request_carries_no_timeline() -> None:
    async with cluster(2) as daemons:
        x = to_input(decode(IMAGE), "224").numpy()
        res = await daemons[0].infer(InferRequest("u1", "resnet34", tensor=x, strategy="modnn"))
        assert res.trace is None

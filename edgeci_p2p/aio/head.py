"""The head of a request where its plan put it: on another peer as a ``head_job``
(the last map sent there, the logits back), or None to run it here."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import torch

from edgeci_p2p.aio.connection import ConnectionLost
from edgeci_p2p.aio.errors import RequestError
from edgeci_p2p.aio.mesh import Mesh
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.replies import Replies
from edgeci_p2p.aio.run import RequestRun
from edgeci_p2p.policy.deadlines import head_seconds
from edgeci_p2p.policy.tile_ids import HEAD_TILE_ID
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import HeadJob, TileResult

log = logging.getLogger("edgeci.peer")


class RemoteHead:
    """Sends a request's head to its plan's head device, if that is another peer."""

    def __init__(self, node: Node, mesh: Mesh, replies: Replies[TileResult]) -> None:
        self.node, self.mesh, self.replies = node, mesh, replies

    async def logits(self, run: RequestRun, cur: torch.Tensor) -> torch.Tensor | None:
        """The logits from the plan's head device, or None to run the head here: when
        the plan keeps it here, or that device fails, refuses or misses its deadline
        (the map is still here, so the request loses only the time spent waiting)."""
        plan, nodes, spec = run.plan, run.nodes, run.spec
        if plan.head_device is None or plan.head_device == plan.auctioneer:
            return None
        node = nodes[plan.head_device]
        conn = self.mesh.get(node)
        if (
            node == self.node.node_id
            or conn is None
            or self.node.bans.banned(node, time.monotonic())
        ):
            return None
        x = np.ascontiguousarray(cur.numpy(), dtype=np.float32)
        tb = run.testbed
        predicted = head_seconds(tb, plan.head_device, spec, x.nbytes) if node in tb.names else 0.0
        deadline = self.node.config.deadlines.deadline(predicted)
        job = HeadJob(
            run.request_id,
            HEAD_TILE_ID,
            run.model,
            run.fingerprint,
            x,
            input_hw=run.input_hw,
            deadline_s=deadline,
            trace=True if run.timeline is not None else None,
        )
        me, m0, stage = self.node.node_id, time.monotonic(), len(plan.stages)
        try:
            with self.replies.awaiting((run.request_id, HEAD_TILE_ID), node) as fut:
                await conn.send(job)
                m1 = time.monotonic()
                res = await asyncio.wait_for(fut, deadline)
            run.span(me, "send", m0, m1, "send", stage, HEAD_TILE_ID)
            run.span(me, "wait", m1, time.monotonic(), "wait", stage, HEAD_TILE_ID)
            run.remote_spans(node, res.spans, self.node.offset(node), stage, HEAD_TILE_ID)
            got = res.output.shape
            if got != (x.shape[0], spec.head.num_classes, 1, 1):
                raise RequestError(
                    ErrorCode.REQUEST_FAILED,
                    f"logits of shape {list(got)}, not {[x.shape[0], spec.head.num_classes]}",
                )
        except (ConnectionLost, RequestError, TimeoutError) as e:
            run.stats.retries += 1
            # Banned like a failed tile: later plans leave it out, and a decision cached
            # before the ban runs the head here instead of waiting on it again.
            seconds = self.node.bans.ban(node, time.monotonic())
            log.warning(
                "head of %s on %s failed (%s); running it here, %s banned for %.0f s",
                run.request_id,
                node,
                str(e) or type(e).__name__,
                node,
                seconds,
            )
            return None
        self.node.bans.clear(node)
        run.stats.bytes += self.node.wire_nbytes(x) + self.node.wire_nbytes(res.output)
        run.stats.computed(node, res.compute_s)
        return torch.from_numpy(res.output.reshape(res.output.shape[0], -1).copy())

"""Passing a client's request on to an idler peer while this node is busy (streams),
and relaying the answer under the client's request id."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time

from edgeci_p2p.aio.connection import Connection, ConnectionLost
from edgeci_p2p.aio.errors import RequestError, received_code
from edgeci_p2p.aio.mesh import Mesh, reply
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.replies import Replies
from edgeci_p2p.nn.models import UnknownModelError
from edgeci_p2p.nn.runtime import WorkError
from edgeci_p2p.policy.forwarding import forward_target, may_forward
from edgeci_p2p.wire.messages import Cancel, Error, InferRequest, InferResult

FORWARD_TILE = 0
"""The tile id under which a forwarded request's answer is awaited."""


class Forwarder:
    """Forwarded requests in flight, per peer, and their answers."""

    def __init__(self, node: Node, mesh: Mesh, probe_s: dict[str, float]) -> None:
        self.node, self.mesh = node, mesh
        self.probe_s = probe_s
        """Each node's seconds for the conv probe item (the bid desk keeps it)."""
        self.answers: Replies[InferResult] = Replies()
        self.in_flight: dict[str, int] = {}
        """Requests in flight that this node forwarded, per peer."""

    def target(self, req: InferRequest) -> str | None:
        """The peer to pass ``req`` on to, or None to run it here
        (:func:`edgeci_p2p.policy.forwarding.forward_target`)."""
        running = self.node.load.running_here
        if not may_forward(req.hops, req.strategy, running):
            return None
        try:
            fingerprint = self.node.store.get(req.model).fingerprint
        except (WorkError, UnknownModelError):
            return None
        now = time.monotonic()
        candidates = [
            m.node_id
            for m in self.node.membership.serving(req.model, fingerprint, now)
            if m.node_id in self.mesh.conns and not self.node.bans.banned(m.node_id, now)
        ]
        own = self.probe_s.get(self.node.node_id)
        return forward_target(running, own, candidates, self.probe_s, self.in_flight)

    async def forward(self, node: str, req: InferRequest) -> InferResult:
        conn = self.mesh.get(node)
        if conn is None:
            raise ConnectionLost(f"no connection to {node}")
        fid = f"{req.request_id}@{secrets.token_hex(4)}"
        self.in_flight[node] = self.in_flight.get(node, 0) + 1
        try:
            with self.answers.awaiting((fid, FORWARD_TILE), node) as fut:
                try:
                    await conn.send(dataclasses.replace(req, request_id=fid, hops=req.hops + 1))
                    res = await asyncio.wait_for(fut, self.node.config.forward_timeout)
                except asyncio.CancelledError:
                    await reply(conn, Cancel(fid))
                    raise
        finally:
            self.in_flight[node] -= 1
        return dataclasses.replace(res, request_id=req.request_id)

    def on_result(self, conn: Connection, msg: InferResult) -> None:
        self.answers.resolve((msg.request_id, FORWARD_TILE), msg)

    def on_error(self, conn: Connection, msg: Error) -> None:
        if msg.request_id is not None:
            error = RequestError(received_code(msg.code), msg.message)
            self.answers.fail((msg.request_id, FORWARD_TILE), error)

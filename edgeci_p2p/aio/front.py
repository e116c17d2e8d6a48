"""The front door: client requests in (``infer_request``, ``plan``, ``peers``), each
admitted, answered here or forwarded, and answered with a result or an error reply
carrying the error's own wire code."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from edgeci_p2p.aio.bid_desk import BidDesk
from edgeci_p2p.aio.connection import Connection, ConnectionLost
from edgeci_p2p.aio.errors import RequestError, code_of
from edgeci_p2p.aio.forwarder import Forwarder
from edgeci_p2p.aio.mesh import Mesh, reply
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.request import RequestRunner
from edgeci_p2p.policy.answered import AnsweredMemory, answer_key
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import (
    Cancel,
    Error,
    InferRequest,
    InferResult,
    Peers,
    PeersResult,
    PlanOptions,
    PlanRequest,
    PlanResult,
)

log = logging.getLogger("edgeci.peer")


class FrontDoor:
    """Client requests: admission, forward or run, and the reply."""

    def __init__(
        self,
        node: Node,
        mesh: Mesh,
        desk: BidDesk,
        runner: RequestRunner,
        forwarder: Forwarder,
        settle: Callable[[], None],
        cluster_view: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.node, self.mesh, self.desk = node, mesh, desk
        self.runner, self.forwarder = runner, forwarder
        self.settle = settle
        self.cluster_view = cluster_view
        self.answering: set[str] = set()
        """Ids of the requests this node is answering (here or through a forward)."""
        self.answered: AnsweredMemory[InferResult] = AnsweredMemory()
        """Recent answers, for a client's re-sent request (``policy/answered.py``)."""
        self._client_tasks: dict[int, dict[str, asyncio.Task[Any]]] = {}
        """Per connection, its requests being answered (by request id) and not yet sent."""

    # ---- messages in ------------------------------------------------------------------------

    def on_infer(self, conn: Connection, msg: InferRequest) -> None:
        task = self.node.tasks.spawn(self._infer_for(conn, msg))
        tasks = self._client_tasks.setdefault(id(conn), {})
        if msg.request_id not in tasks:  # a duplicate id is refused by infer(), not tracked
            tasks[msg.request_id] = task
            task.add_done_callback(lambda _: self._untrack(conn, msg.request_id, task))

    def _untrack(self, conn: Connection, request_id: str, task: asyncio.Task[Any]) -> None:
        tasks = self._client_tasks.get(id(conn))
        if tasks is not None and tasks.get(request_id) is task:
            del tasks[request_id]

    def on_cancel(self, conn: Connection, msg: Cancel) -> None:
        """A client cancels its own request: cancelled everywhere as if it had gone away,
        and answered with 204 instead of a result (nothing if the result already left)."""
        if msg.tile_id is not None:
            return
        task = self._client_tasks.get(id(conn), {}).pop(msg.request_id, None)
        if task is None or task.done():
            return
        task.cancel()
        cancelled = Error(int(ErrorCode.CANCELLED), "cancelled by the client", msg.request_id)
        self.node.tasks.spawn(reply(conn, cancelled))

    def on_plan(self, conn: Connection, msg: PlanRequest) -> None:
        self.node.tasks.spawn(self._plan_for(conn, msg))

    def on_peers(self, conn: Connection, msg: Peers) -> None:
        self.node.tasks.spawn(
            reply(conn, PeersResult(msg.request_id, {"peers": self.cluster_view()}))
        )

    def on_closed(self, conn: Connection) -> None:
        """A client that went away cancels its requests: their tiles are cancelled on
        every peer and their reservations released."""
        for task in self._client_tasks.pop(id(conn), {}).values():
            task.cancel()

    # ---- answering --------------------------------------------------------------------------

    async def _plan_for(self, conn: Connection, req: PlanRequest) -> None:
        try:
            opts = PlanOptions.from_dict(req.body, "plan.body")
            h, w = opts.size
            decision, timing = await self.desk.make_plan(
                req.request_id, opts.model, opts.strategy, h, w, dry_run=True
            )
            body = {
                "plan": decision.plan.to_dict(),
                "text": str(decision.plan),
                "nodes": decision.nodes,
                "timing": timing,
                "testbed": decision.testbed.to_dict(),
                "left_out": decision.left_out,
            }
            await conn.send(PlanResult(req.request_id, body))
        except (RequestError, ValueError) as e:  # WorkError, UnknownModelError included
            await reply(conn, Error(int(code_of(e)), str(e), req.request_id))
        except ConnectionLost:
            pass

    async def _infer_for(self, conn: Connection, req: InferRequest) -> None:
        try:
            result = await self.admitted(req)
        except (RequestError, ValueError) as e:  # WorkError, ImageError... included
            await reply(conn, Error(int(code_of(e)), str(e), req.request_id))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("request %s failed", req.request_id)
            await reply(conn, Error(int(ErrorCode.REQUEST_FAILED), repr(e), req.request_id))
            return
        # Answered: from now on a cancel of this request finds nothing to cancel.
        self._client_tasks.get(id(conn), {}).pop(req.request_id, None)
        await reply(conn, result)

    async def admitted(self, req: InferRequest) -> InferResult:
        """Answer ``req`` within ``max_requests`` (beyond it: a ``busy`` error at once,
        rather than a queue without bound); a client's and the dashboard's way in."""
        load = self.node.load
        if load.requests >= self.node.config.max_requests:
            busy = (
                f"busy: {load.requests} requests in progress here; retry or send it to another peer"
            )
            self.node.metrics.answered(req, None, "busy", 0.0, busy)
            raise RequestError(ErrorCode.BUSY, busy)
        load.requests += 1
        try:
            return await self.infer(req)
        finally:
            load.requests -= 1

    async def infer(self, req: InferRequest) -> InferResult:
        """Answer ``req``: here, or, when this node is busy with earlier requests and
        a peer is idler, on that peer (a stream's frames spread over the cluster without
        the entry peer planning or decoding them). A forward that fails runs here.
        A request answered here a moment ago (same id, same content) is answered from
        memory: a client re-sends it when its entry peer died before relaying it."""
        key = answer_key(req)
        remembered = self.answered.recall(key, time.monotonic())
        if remembered is not None:
            self.node.load.from_memory += 1
            return dataclasses.replace(remembered, request_id=req.request_id)
        if req.request_id in self.answering:
            # Tiles, strip jobs and the input's pixels are all found by request id.
            raise RequestError(
                ErrorCode.BAD_REQUEST,
                f"request id {req.request_id!r} is already being answered here: "
                "give every request its own id",
            )
        self.answering.add(req.request_id)
        t0 = time.perf_counter()
        try:
            result = await self._infer_once(req)
        except BaseException as e:
            outcome = (
                "cancelled"
                if isinstance(e, asyncio.CancelledError)
                else code_of(e).name.lower()
                if isinstance(e, RequestError | ValueError)
                else "failed"
            )
            self.node.metrics.answered(req, None, outcome, time.perf_counter() - t0, str(e))
            raise
        finally:
            self.answering.discard(req.request_id)
        self.node.metrics.answered(req, result, "ok", time.perf_counter() - t0)
        self.answered.remember(key, result, time.monotonic())
        return result

    async def _infer_once(self, req: InferRequest) -> InferResult:
        target = self.forwarder.target(req)
        if target is not None:
            try:
                return await self.forwarder.forward(target, req)
            except (ConnectionLost, RequestError, TimeoutError) as e:
                log.warning(
                    "request %s forwarded to %s failed (%s); running it here",
                    req.request_id,
                    target,
                    str(e) or type(e).__name__,
                )
        self.node.load.running_here += 1
        self.node.load.changed.set()
        try:
            return await self.runner.answer(req)
        finally:
            self.node.load.running_here -= 1
            self.node.load.changed.set()
            self.settle()


__all__ = ["FrontDoor"]

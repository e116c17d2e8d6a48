"""Background plans made on a peer's CPU, not the auctioneer's (``plan_job``).

An auctioneer whose decision went stale plans the new bids off the request's path
(:mod:`.refresh`). In its own planning child that plan takes its own CPU: on the
emulated cluster the auctioneer is the busiest peer, so the child was held until the
daemon idled, and under back-to-back requests every request of a run then ran the plan
of its first rounds (9-26% slower, by its own bids, than a plan made for them). So the
job goes to another peer (:func:`~edgeci_p2p.policy.plan_peer.spare_peer`: the fastest
one the plan at hand leaves out, else the fastest one it uses): it plans it in its own
planning child (at the lowest CPU priority, held while it serves work) and answers the
decision, which the auctioneer checks like any plan before it keeps it. A peer that
fails, refuses or is too slow leaves the job to the auctioneer's own child, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from edgeci_p2p.aio.aside import AsideError, PlanningAside
from edgeci_p2p.aio.connection import Connection
from edgeci_p2p.aio.mesh import Mesh, reply
from edgeci_p2p.aio.node import Node
from edgeci_p2p.auction.aside import answer_of, entry
from edgeci_p2p.auction.decider import Entry
from edgeci_p2p.core.plan import PlanError, validate
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.wire.messages import MAX_PLAN_JOB_CHARS, PlanJob, PlanJobResult

log = logging.getLogger("edgeci.auction")

TIMEOUT_S = 20.0
"""Seconds a peer has to answer a plan job (VGG-16's halo plan: 0.3-0.6 s of an uncapped
core, ~4 s at 0.13 of one); then the auctioneer's own child plans it."""


class PeerPlanning:
    """Both sides of ``plan_job``: sending a job and awaiting its decision (as
    auctioneer), and planning another's job in this node's planning child (as peer)."""

    def __init__(
        self, node: Node, mesh: Mesh, aside: PlanningAside | None, timeout_s: float = TIMEOUT_S
    ) -> None:
        self.node, self.mesh, self.aside, self.timeout_s = node, mesh, aside, timeout_s
        self._waiting: dict[str, tuple[str, asyncio.Future[PlanJobResult]]] = {}
        """Job id -> (the peer planning it, its answer)."""
        self.sent = 0
        """Jobs sent to peers (for tests and the logs)."""
        self.served = 0
        """Jobs planned here for other auctioneers."""

    # ---- as auctioneer ------------------------------------------------------------------------

    async def decide(
        self,
        peer: str,
        job: Mapping[str, Any],
        spec: ModelSpec,
        bidders: frozenset[str],
        timeout_s: float | None = None,
    ) -> Entry:
        """The decision ``job`` asks for, planned on ``peer``; raises :class:`AsideError`
        when it cannot be had (no connection, an error, no answer in ``timeout_s``
        seconds (default :attr:`timeout_s`), a plan that does not compute ``spec`` or
        names a device that did not bid)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        text = json.dumps(job)
        if len(text) > MAX_PLAN_JOB_CHARS:
            raise AsideError(f"a job of {len(text)} characters is too long to send")
        job_id = secrets.token_hex(8)
        fut: asyncio.Future[PlanJobResult] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = (peer, fut)
        try:
            if not await self.mesh.send(peer, PlanJob(job_id, text)):
                raise AsideError(f"no connection to {peer}")
            self.sent += 1
            got = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise AsideError(f"{peer} did not answer in {timeout_s:g} s") from None
        finally:
            self._waiting.pop(job_id, None)
        if got.error is not None or got.answer is None:
            raise AsideError(f"{peer} could not plan it: {got.error}")
        try:
            hit = entry(json.loads(got.answer))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise AsideError(f"{peer} answered a decision that is not one: {e}") from e
        check_decision(hit, spec, bidders, peer)
        return hit

    def on_result(self, conn: Connection, msg: PlanJobResult) -> None:
        got = self._waiting.get(msg.job_id)
        if got is None or got[0] != conn.peer.node_id:
            log.warning("plan_job_result from %s for a job it was not given", conn.peer.node_id)
            return
        if not got[1].done():
            got[1].set_result(msg)

    def peer_lost(self, node_id: str) -> None:
        """Jobs on a peer that went away fail now, not at their timeout."""
        for job_id, (peer, fut) in list(self._waiting.items()):
            if peer == node_id and not fut.done():
                fut.set_result(PlanJobResult(job_id, error=f"{node_id} went away"))

    # ---- as peer ------------------------------------------------------------------------------

    def on_job(self, conn: Connection, msg: PlanJob) -> None:
        self.node.tasks.spawn(self._serve(conn, msg))

    async def _serve(self, conn: Connection, msg: PlanJob) -> None:
        aside = self.aside
        try:
            if conn.peer.role != "peer":  # a plan is a second of CPU: a peer's, for peers
                raise AsideError(f"plan jobs are taken from peers, not a {conn.peer.role}")
            if aside is None or aside.broken is not None:
                raise AsideError("this peer plans in no child")
            job = json.loads(msg.job)
            if not isinstance(job, dict):
                raise AsideError("a job is a JSON object")
            # Held while this node serves work, as its own jobs are: sent here because
            # the plan at hand leaves this node out (idle unless others use it), or
            # because it uses every peer (this one is idle between its strips of one
            # request and the next, and through the requests it has no part in).
            hit = await aside.decide(job)
            answer = json.dumps(answer_of(hit))
        except (AsideError, ValueError) as e:
            await reply(conn, PlanJobResult(msg.job_id, error=str(e)[:500]))
            return
        self.served += 1
        if len(answer) > MAX_PLAN_JOB_CHARS:
            await reply(conn, PlanJobResult(msg.job_id, error="the decision is too long to send"))
            return
        await reply(conn, PlanJobResult(msg.job_id, answer=answer))


def check_decision(hit: Entry, spec: ModelSpec, bidders: frozenset[str], peer: str) -> None:
    """A decision from the network before it is kept: its plan computes ``spec`` and its
    devices and work go to the round's bidders only."""
    items, plan, testbed, _ = hit
    if plan is None or testbed is None:
        raise AsideError(f"{peer} answered no plan")
    strangers = (set(plan.devices) | set(items)) - bidders
    if strangers:
        raise AsideError(f"{peer}'s plan names peers that did not bid: {sorted(strangers)}")
    if tuple(testbed.names) != plan.devices:
        raise AsideError(f"{peer}'s plan and testbed name different devices")
    try:
        validate(plan, spec)
    except PlanError as e:
        raise AsideError(f"{peer}'s plan is not a plan of this model: {e}") from e


__all__ = ["TIMEOUT_S", "PeerPlanning", "check_decision"]

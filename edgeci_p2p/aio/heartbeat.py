"""Heartbeats and link probes: a ping to every peer each interval, padded with
:data:`~edgeci_p2p.core.membership.PROBE_BYTES` when that peer's link is due a
probe and this node is idle (so it measures the link, not our own queue)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from edgeci_p2p.aio.connection import Connection
from edgeci_p2p.aio.mesh import Mesh, reply
from edgeci_p2p.aio.node import Node
from edgeci_p2p.core.membership import HEARTBEAT_INTERVAL, PROBE_BYTES
from edgeci_p2p.core.timeline import ClockSync
from edgeci_p2p.wire.messages import Ping, Pong

log = logging.getLogger("edgeci.peer")


class Heartbeats:
    """Pings out, pongs in: RTTs, liveness and link rates into the membership."""

    def __init__(self, node: Node, mesh: Mesh, idle: Callable[[], bool]) -> None:
        self.node, self.mesh, self.idle = node, mesh, idle
        self.seq = 0
        self._probes: dict[tuple[str, int], int] = {}
        """Link probes in flight: (node, ping seq) -> padding bytes."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self.seq += 1
            now = time.monotonic()
            # Stale probe entries (a pong that never came) go with the round's seq.
            for key in [k for k in self._probes if k[1] < self.seq - 8]:
                del self._probes[key]
            for node, conn in list(self.mesh.conns.items()):
                m = self.node.membership.members.get(node)
                probe = m is not None and m.probe_due(now) and self.idle()
                self.node.tasks.spawn(self._ping(conn, PROBE_BYTES if probe else 0))

    async def _ping(self, conn: Connection, pad: int = 0) -> None:
        if pad:
            self._probes[(conn.peer.node_id, self.seq)] = pad
        await reply(conn, Ping(self.seq, time.monotonic(), bytes(pad) if pad else None))

    def on_ping(self, conn: Connection, msg: Ping) -> None:
        self.node.tasks.spawn(reply(conn, Pong(msg.seq, msg.time, time.monotonic())))

    def on_pong(self, conn: Connection, msg: Pong) -> None:
        now = time.monotonic()
        peer = conn.peer.node_id
        self.node.clocks.setdefault(peer, ClockSync()).sample(msg.echo, msg.time, now)
        pad = self._probes.pop((peer, msg.seq), 0)
        if not pad:
            self.node.membership.heartbeat(peer, now, max(0.0, now - msg.echo))
            return
        self.node.membership.probed(peer, now, pad, max(0.0, now - msg.echo))
        m = self.node.membership.members.get(peer)
        if m is not None and m.probed_bandwidth is not None:
            log.debug(
                "link probe to %s: %.1f ms, rate %.1f MB/s",
                peer,
                (now - msg.echo) * 1e3,
                m.probed_bandwidth / 1e6,
            )

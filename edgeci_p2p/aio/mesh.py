"""The connections of one peer: accept, dial (static peers, mDNS sightings, gossip),
read each connection's messages into the router, and send to a node by id."""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgeci_p2p.aio.connection import Connection, ConnectionLost, connect, handshake
from edgeci_p2p.aio.discovery import Sighting
from edgeci_p2p.aio.node import Node
from edgeci_p2p.aio.router import Router
from edgeci_p2p.core.membership import DuplicateNodeError
from edgeci_p2p.wire.auth import ReplayGuard
from edgeci_p2p.wire.errors import ErrorCode, ProtocolError
from edgeci_p2p.wire.messages import Error, Message, Peers
from edgeci_p2p.wire.session import Channel

log = logging.getLogger("edgeci.peer")

GOSSIP_PREFIX = "gossip-"
"""Request ids of the ``peers`` requests peers send each other to learn the cluster."""


class Mesh:
    """Who this peer is connected to, and the one way messages come in and go out."""

    def __init__(self, node: Node, router: Router) -> None:
        self.node = node
        self.router = router
        self.conns: dict[str, Connection] = {}
        """Peer connections by node id (clients' connections are not kept here)."""
        self.on_peer_lost: list[Callable[[str], None]] = []
        """Called with a peer's node id when its connection ends."""
        self.on_closed: list[Callable[[Connection], None]] = []
        """Called with every connection (peer or client) that ends."""
        self.open: dict[int, Connection] = {}
        """Every connection past its handshake, peers' and clients'."""
        self._guard = ReplayGuard()
        self.dial_context: ssl.SSLContext | None = None
        """TLS for the connections this peer dials (None: ``--plaintext``)."""
        self._dialing: set[tuple[str, int]] = set()

    # ---- sending ----------------------------------------------------------------------------

    def get(self, node: str) -> Connection | None:
        return self.conns.get(node)

    async def send(self, node: str, msg: Message) -> bool:
        """Send ``msg`` to ``node``; False when there is no connection or it was lost."""
        conn = self.conns.get(node)
        return conn is not None and await reply(conn, msg)

    # ---- inbound and outbound connections ---------------------------------------------------

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handshaken: Callable[[], None] = lambda: None,
    ) -> None:
        """An inbound connection (after TLS, aio/tls.py's Listener); ``handshaken`` is
        called once the protocol handshake is over, successful or not."""
        task = asyncio.current_task()
        if task is not None:  # so that stop() can cancel inbound connections too
            self.node.tasks.adopt(task)
        try:
            try:
                conn = await handshake(
                    reader,
                    writer,
                    self.node.session_config(),
                    replay_guard=self._guard,
                    read_timeout=self.node.config.read_timeout,
                    channel=None if self.node.config.plaintext else Channel(listener=True),
                )
            except ProtocolError as e:  # refused by this side: say so
                log.warning("inbound handshake refused: %s", e)
                return
            except Exception as e:  # a bad handshake only closes that socket
                log.info("inbound handshake failed: %s", e)
                return
            finally:
                handshaken()
            await self._serve(conn, "inbound", None)
        except asyncio.CancelledError:
            # Shutdown: this task is the server's connection handler, the outermost
            # frame; ending quietly spares asyncio's "exception in callback" report.
            return

    def on_sighting(self, s: Sighting) -> None:
        self.node.membership.sighted(s.node_id, s.host, s.port, "mdns")
        if s.node_id not in self.conns:
            self.node.tasks.spawn(self.dial_once(s.host, s.port, "mdns"))

    async def dial_once(self, host: str, port: int, source: str) -> None:
        if (host, port) in self._dialing:
            return
        self._dialing.add((host, port))
        try:
            conn = await connect(host, port, self.node.session_config(), tls=self.dial_context)
        except ProtocolError as e:
            log.warning("dial %s:%d refused here: %s", host, port, e)
            return
        except Exception as e:
            log.debug("dial %s:%d failed: %s", host, port, e)
            return
        finally:
            self._dialing.discard((host, port))
        await self._serve(conn, source, (host, port))

    async def dial_forever(self, host: str, port: int, source: str) -> None:
        """Static peers: keep a connection up, retrying with backoff."""
        delay = 0.2
        while True:
            await self.dial_once(host, port, source)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _serve(self, conn: Connection, source: str, dialed: tuple[str, int] | None) -> None:
        self.open[id(conn)] = conn
        try:
            await self._serve_open(conn, source, dialed)
        finally:
            self.open.pop(id(conn), None)

    async def _serve_open(
        self, conn: Connection, source: str, dialed: tuple[str, int] | None
    ) -> None:
        peer = conn.peer
        is_peer = peer.role == "peer"
        if is_peer:
            host = dialed[0] if dialed else conn.address[0]
            try:
                self.node.membership.handshake(
                    peer.node_id, host, peer.port, peer.name, peer.models, time.monotonic(), source
                )
            except DuplicateNodeError as e:
                log.error("%s", e)
                await conn.send(Error(int(ErrorCode.BAD_REQUEST), str(e)))
                await conn.close()
                return
            self.conns[peer.node_id] = conn
            # Counted per peer across its connections (reconnects add up).
            conn.traffic = self.node.traffic.setdefault(peer.node_id, conn.traffic)
            # Gossip: ask who it knows, so one static seed address finds the whole cluster.
            self.node.tasks.spawn(reply(conn, Peers(f"{GOSSIP_PREFIX}{secrets.token_hex(4)}")))
        try:
            while True:
                self.router.route(conn, await conn.recv())
        except ConnectionLost as e:
            log.debug("connection to %s ended: %s", peer.node_id, e)
        finally:
            await conn.close()
            for closed in self.on_closed:
                closed(conn)
            if is_peer and self.conns.get(peer.node_id) is conn:
                del self.conns[peer.node_id]
                self.node.membership.lost(peer.node_id)
                for lost in self.on_peer_lost:
                    lost(peer.node_id)

    def learn(self, entries: Sequence[Any]) -> None:
        """A gossip answer: dial the peers it names that this node is not connected to."""
        for e in entries:
            if not isinstance(e, dict) or e.get("self") or e.get("id") == self.node.node_id:
                continue
            node_id, address = str(e.get("id", "")), str(e.get("address", ""))
            host, _, port = address.rpartition(":")
            if node_id and node_id not in self.conns and port.isdigit() and host != "0.0.0.0":
                self.node.membership.sighted(node_id, host, int(port), "gossip")
                self.node.tasks.spawn(self.dial_once(host, int(port), "gossip"))

    async def say_goodbye(self, timeout: float = 0.5) -> None:
        """Tell every open connection that this peer is shutting down (150), best effort."""
        bye = Error(int(ErrorCode.INTERNAL), "shutting down")
        sends = [asyncio.ensure_future(reply(c, bye)) for c in list(self.open.values())]
        if sends:
            _, late = await asyncio.wait(sends, timeout=timeout)
            for t in late:
                t.cancel()

    async def close_all(self) -> None:
        for c in list(self.conns.values()):
            await c.close()


async def reply(conn: Connection, msg: Message) -> bool:
    """Send ``msg`` on ``conn``; False (not an exception) when the connection is gone."""
    try:
        await conn.send(msg)
    except ConnectionLost:
        return False
    return True


__all__ = ["GOSSIP_PREFIX", "Mesh", "reply"]

"""One TCP connection driven by the sans-IO wire session (the only bytes<->messages path)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass, field

from edgeci_p2p.wire.auth import ReplayGuard
from edgeci_p2p.wire.errors import ErrorCode, ProtocolError, RemoteProtocolError
from edgeci_p2p.wire.messages import Error, Hello, Message
from edgeci_p2p.wire.session import (
    Channel,
    ConnectionClosed,
    Established,
    Session,
    SessionConfig,
)

log = logging.getLogger("edgeci.connection")
READ_SIZE = 1 << 20


class ConnectionLost(Exception):
    """The peer closed the connection or broke the protocol."""


@dataclass
class Traffic:
    """Bytes a connection (or every connection to one peer) carried, for the metrics."""

    sent: int = 0
    received: int = 0


@dataclass
class Connection:
    """A handshaken connection: ``send`` a message, ``recv`` the next one."""

    session: Session
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: Hello
    read_timeout: float | None = None
    """Seconds a partially received frame may stay incomplete before we give up."""
    traffic: Traffic = field(default_factory=Traffic)
    """Bytes written and read; the mesh shares one per peer across its connections."""
    _closed: bool = False
    _eof: bool = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.writer.get_extra_info("peername")[:2]
        return str(host), int(port)

    async def send(self, message: Message) -> None:
        """Write ``message``; waits while the peer's receive window is full (backpressure)."""
        if self._closed:
            raise ConnectionLost("connection already closed")
        try:
            data = self.session.send(message)
            self.traffic.sent += len(data)
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self._closed = True
            raise ConnectionLost(f"send to {self.peer.node_id} failed: {e}") from e

    async def recv(self) -> Message:
        """The next application message; raises ConnectionLost at EOF or violation."""
        while True:
            try:
                event = self.session.next_event()
            except RemoteProtocolError as e:
                await self._flush_and_close()
                raise ConnectionLost(f"{self.peer.node_id} broke the protocol: {e}") from e
            if isinstance(event, ConnectionClosed):
                await self.close()
                raise ConnectionLost(f"{self.peer.node_id}: {event.message}")
            if isinstance(event, Message):
                return event
            await self._read_more()

    async def _read_more(self) -> None:
        timeout = self.read_timeout if self.session.buffered else None
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for runs the read as a
            # task of its own (one per chunk of a large frame, on every peer's loop),
            # and when that read finished in the iteration this task was cancelled it
            # returned the data and dropped the cancellation. A connection's serve loop
            # then read on, and a daemon shutting down waited for it forever.
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            self.writer.write(
                self.session.send(Error(int(ErrorCode.MALFORMED_FRAME), "read timeout mid-frame"))
            )
            await self._flush_and_close()
            raise ConnectionLost(f"{self.peer.node_id}: read timeout mid-frame") from None
        except (ConnectionError, OSError) as e:
            await self.close()
            raise ConnectionLost(f"{self.peer.node_id}: {e}") from e
        if not data and self._eof:
            # EOF again: the session made no ConnectionClosed of the first one (it was
            # mid-frame, or closing); feeding it another would be our protocol error.
            await self.close()
            raise ConnectionLost(f"{self.peer.node_id}: closed")
        self._eof = not data
        self.traffic.received += len(data)
        self.session.receive_data(data)

    async def _flush_and_close(self) -> None:
        try:
            out = self.session.data_to_send()
            if out:
                self.writer.write(out)
                await asyncio.wait_for(self.writer.drain(), 1.0)
        except (ConnectionError, OSError, TimeoutError):
            pass
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    @property
    def closed(self) -> bool:
        return self._closed


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    config: SessionConfig,
    *,
    timeout: float = 5.0,
    replay_guard: ReplayGuard | None = None,
    read_timeout: float | None = 10.0,
    channel: Channel | None = None,
) -> Connection:
    """Exchange hello and auth (auth over TLS, or when a cluster key is set); closes the
    socket on failure. ``channel``: what TLS showed this side (None: plaintext)."""
    _nodelay(writer)
    session = Session(config, replay_guard=replay_guard, channel=channel)

    async def run() -> Hello:
        writer.write(session.start())
        await writer.drain()
        while True:
            try:
                event = session.next_event()
            except ProtocolError:
                out = session.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
                raise
            out = session.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            if isinstance(event, Established):
                return event.peer
            if isinstance(event, ConnectionClosed):
                raise ConnectionLost(f"closed during handshake: {event.message}")
            if isinstance(event, Error):
                raise ConnectionLost(f"refused by peer: {event.message} (code {event.code})")
            if event is None:
                data = await reader.read(READ_SIZE)
                session.receive_data(data)

    try:
        peer = await asyncio.wait_for(run(), timeout)
    except BaseException:
        writer.close()
        raise
    return Connection(session, reader, writer, peer, read_timeout)


async def connect(
    host: str,
    port: int,
    config: SessionConfig,
    *,
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
) -> Connection:
    """Dial ``host:port``: TLS with ``tls`` (``aio/tls.client_context``), else plaintext."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=tls, ssl_handshake_timeout=timeout if tls else None
            ),
            timeout,
        )
    except ssl.SSLError as e:
        raise ConnectionLost(
            f"TLS handshake with {host}:{port} failed ({e}): is that peer running "
            "--plaintext, or an older protocol version?"
        ) from e
    except (OSError, TimeoutError) as e:
        raise ConnectionLost(f"cannot connect to {host}:{port}: {e}") from e
    channel = None
    if tls is not None:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        if not der:
            writer.close()
            raise ConnectionLost(f"{host}:{port} presented no TLS certificate")
        channel = Channel(listener=False, peer_cert=bytes(der))
    return await handshake(reader, writer, config, timeout=timeout, channel=channel)

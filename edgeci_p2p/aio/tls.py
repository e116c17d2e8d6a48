"""TLS 1.3 for every connection (stdlib ``ssl`` through asyncio), and the listener.

Each side's certificate is self-signed (:mod:`edgeci_p2p.wire.identity`): the dialling
side checks no certificate chain; what makes the channel trustworthy is the
handshake inside it, which binds the cluster key's proof and each side's signature
to both certificates' fingerprints (``wire/auth.py``, ``wire/session.py``).

The listener accepts raw sockets itself so that, before TLS, it can look at the
first byte a connection sends: a TLS ClientHello starts with 0x16, a protocol frame
with its length. A plaintext connection to a TLS peer (an older protocol version, or
``--plaintext`` at one end only) gets a plaintext ``error`` frame that says why
(``TLS_REQUIRED``) instead of an unreadable TLS failure. The wait for that first
byte and the TLS handshake are cut off by the read timeout, and at most
``max_handshakes`` connections are in their handshake at once (the accept loop
waits for a slot; the kernel's backlog holds the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from edgeci_p2p.wire import framing
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import PROTOCOL_VERSION, Error

log = logging.getLogger("edgeci.tls")

TLS_RECORD_HANDSHAKE = 0x16
"""First byte of every TLS ClientHello."""
KEY_FILE = "tls_key.pem"
CERT_FILE = "tls_cert.pem"


def load_identity(state_dir: Path | None) -> Identity:
    """The key pair and certificate in ``state_dir``, made there on first start (the key
    file readable by its owner only); a fresh one in memory without a state dir."""
    if state_dir is None:
        return Identity.generate()
    key, cert = state_dir / KEY_FILE, state_dir / CERT_FILE
    if key.is_file() and cert.is_file():
        return Identity.from_pem(key.read_bytes(), cert.read_bytes())
    ident = Identity.generate()
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ident.key_pem())
    cert.write_bytes(ident.cert_pem())
    return ident


def server_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3 only, presenting ``identity``'s certificate; no client certificate asked
    (the dialling side proves its key in the handshake instead)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # load_cert_chain reads files only: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="edgeci-tls-") as d:
        key, cert = Path(d) / KEY_FILE, Path(d) / CERT_FILE
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.key_pem())
        cert.write_bytes(identity.cert_pem())
        ctx.load_cert_chain(cert, key)
    return ctx


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only; the listener's self-signed certificate is not checked against any
    CA or name here: the handshake inside binds it (``wire/auth.py``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_certificate(writer: asyncio.StreamWriter) -> bytes | None:
    """The DER certificate the other end presented in TLS (None on plaintext)."""
    obj = writer.get_extra_info("ssl_object")
    if obj is None:
        return None
    der = obj.getpeercert(binary_form=True)
    return bytes(der) if der else None


TLS_REQUIRED_MESSAGE = (
    f"this peer speaks protocol {PROTOCOL_VERSION} and accepts only TLS connections: "
    "upgrade the other peer, or give --plaintext to both ends"
)

Handler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, Callable[[], None]], Awaitable[None]
]


class Listener:
    """Accepts connections, tells TLS from plaintext, and hands each on after TLS.

    ``handler(reader, writer, handshaken)`` runs the protocol handshake and must call
    ``handshaken()`` once it is over (the slot in the handshake cap is then free)."""

    def __init__(
        self,
        handler: Handler,
        context: ssl.SSLContext | None,
        *,
        read_timeout: float,
        max_handshakes: int,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self.handler = handler
        self.context = context
        self.read_timeout = read_timeout
        self.slots = asyncio.Semaphore(max_handshakes)
        self.in_handshake = 0
        """Connections accepted whose handshake is not over (at most max_handshakes)."""
        self._spawn = spawn
        self._sock: socket.socket | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Bind and listen; returns the port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._loop_task = asyncio.get_running_loop().create_task(self._accept_loop(sock))
        return int(sock.getsockname()[1])

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._sock is not None:
            self._sock.close()

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            try:
                sock, _ = await loop.sock_accept(lsock)
            except OSError as e:
                self.slots.release()
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            except BaseException:
                self.slots.release()
                raise
            self.in_handshake += 1
            self._spawn(self._connection(sock))

    async def _connection(self, sock: socket.socket) -> None:
        released = False

        def handshaken() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_handshake -= 1
                self.slots.release()

        try:
            streams = await self._open(sock)
            if streams is None:
                return
            await self.handler(*streams, handshaken)
        finally:
            handshaken()

    async def _open(
        self, sock: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:  # --plaintext: both ends send hello at once, no peeking
            return await asyncio.open_connection(sock=sock, limit=2**16)
        try:
            first = await asyncio.wait_for(_peek(sock), self.read_timeout)
        except (TimeoutError, OSError) as e:
            log.info("connection sent nothing within %.1f s: %s", self.read_timeout, e)
            sock.close()
            return None
        if first[:1] != bytes([TLS_RECORD_HANDSHAKE]):
            if first:
                log.warning("plaintext connection refused: %s", TLS_REQUIRED_MESSAGE)
                err = Error(int(ErrorCode.TLS_REQUIRED), TLS_REQUIRED_MESSAGE).to_wire()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(loop.sock_sendall(sock, framing.encode_frame(err)), 1)
                    # Read what it sent (its hello) before closing: unread bytes at close
                    # make the kernel reset the connection, and the error could be lost.
                    sock.recv(1 << 16)
                    sock.shutdown(socket.SHUT_WR)
            sock.close()
            return None
        reader = asyncio.StreamReader(limit=2**16)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self.context,
                ssl_handshake_timeout=self.read_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.info("TLS handshake refused: %s", e)
            sock.close()
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _peek(sock: socket.socket) -> bytes:
    """The first byte waiting on ``sock``, left there (b"" at EOF)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(1, socket.MSG_PEEK)

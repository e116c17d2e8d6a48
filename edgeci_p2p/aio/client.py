"""Client API: ``async with Client("host:port") as c: r = await c.infer(image, model=...)``."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edgeci_p2p.aio.connection import Connection, ConnectionLost, connect
from edgeci_p2p.aio.tls import client_context
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import (
    Error,
    InferRequest,
    InferResult,
    Message,
    Peers,
    PeersResult,
    PlanOptions,
    PlanRequest,
    PlanResult,
)
from edgeci_p2p.wire.session import SessionConfig


class ClientError(Exception):
    """The peer answered a request with an error (``code`` is the wire code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code


def read_key(path: str | Path) -> bytes:
    """A cluster key file's key: its bytes less leading and trailing ASCII whitespace
    (``docs/protocol.md`` section 6), so a trailing newline is not part of the key."""
    return Path(path).read_bytes().strip(b" \t\r\n\x0b\x0c")


def parse_address(addr: str, default_port: int = 7420) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT") from None


def parse_addresses(addresses: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"a:1,b:2"`` or ``["a:1", "b:2,c:3"]`` as ``[(host, port), ...]``, duplicates
    dropped, order kept (the first is the entry peer)."""
    items = [addresses] if isinstance(addresses, str) else list(addresses)
    out: list[tuple[str, int]] = []
    for item in items:
        for part in item.split(","):
            if part.strip() and (addr := parse_address(part.strip())) not in out:
                out.append(addr)
    return out


class Client:
    """A connection to one peer of the cluster, with others to fail over to.

    Requests may overlap: replies are matched by request id, so a stream can keep
    several frames in flight on one connection. ``address`` is one peer, several
    (a list, or a comma-separated string), or none with ``mdns_interfaces``: the
    peers are then found by an mDNS browse. When the connection is lost before a
    request is answered, the client connects to the next peer that answers and
    sends the request again under the same request id; the application gets one
    answer. (A peer that had finished it answers from its memory of recent answers,
    ``docs/protocol.md`` 4.4; otherwise it runs again: inference has no side effects.)
    """

    def __init__(
        self,
        address: str | Sequence[str] = (),
        *,
        key: bytes | None = None,
        timeout: float = 300.0,
        mdns_interfaces: Sequence[str] = (),
        browse_seconds: float = 3.0,
        plaintext: bool = False,
    ) -> None:
        """TLS 1.3 bound to the handshake unless ``plaintext`` (which the peers must
        run with too); ``key`` proves cluster membership."""
        self.addresses = parse_addresses(address)
        if not self.addresses and not mdns_interfaces:
            raise ValueError("a Client needs a peer address or mDNS interfaces to browse")
        self.mdns_interfaces = list(mdns_interfaces)
        self.browse_seconds = browse_seconds
        self.key = key
        self.plaintext = plaintext
        self.timeout = timeout
        self.failovers = 0
        """Times a lost connection was replaced by one to another peer."""
        self.resent = 0
        """Requests sent again after their connection was lost."""
        self._conn: Connection | None = None
        self._entry = 0
        """Index in ``addresses`` of the peer connected to."""
        self._waiting: dict[str, tuple[Connection, asyncio.Future[Message]]] = {}
        """Requests awaiting their answer: the connection each was sent on, its future."""
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._identity = Identity.generate("edgeci-p2p client")
        self._node_id = self._identity.node_id

    @property
    def host(self) -> str:
        return self.addresses[self._entry][0] if self.addresses else ""

    @property
    def port(self) -> int:
        return self.addresses[self._entry][1] if self.addresses else 0

    async def __aenter__(self) -> Client:
        if not self.addresses:
            await self._browse()
        await self._connect(start=0, lost=None)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionLost):
                await self._reader
            self._reader = None
        if self._conn is not None:
            await self._conn.close()

    async def _browse(self) -> None:
        from edgeci_p2p.aio.discovery import browse

        found = await browse(self.mdns_interfaces, self.browse_seconds)
        for s in found:
            if (s.host, s.port) not in self.addresses:
                self.addresses.append((s.host, s.port))
        if not self.addresses:
            raise ConnectionLost(
                f"no edgeci peer answered mDNS on {', '.join(self.mdns_interfaces)} within "
                f"{self.browse_seconds:g} s (give a peer with --peer HOST:PORT)"
            )

    async def _connect(self, start: int, lost: Connection | None) -> Connection:
        """Connected to the first peer from ``addresses[start]`` on (wrapping round) that
        answers; ``lost``: the connection that failed (another caller may already have
        replaced it: then that one is used)."""
        async with self._connect_lock:
            if self._conn is not None and self._conn is not lost and not self._conn.closed:
                return self._conn
            if lost is not None:
                self._lost(lost, ConnectionLost("connection lost"))
                await lost.close()
                if self._reader is not None:
                    self._reader.cancel()
            failures: list[str] = []
            for attempt in range(2 if self.mdns_interfaces else 1):
                if attempt:  # every known peer failed: look again
                    with contextlib.suppress(ConnectionLost):
                        await self._browse()
                n = len(self.addresses)
                for i in range(n):
                    index = (start + i) % n
                    host, port = self.addresses[index]
                    config = SessionConfig(
                        node_id=self._node_id, role="client", key=self.key, identity=self._identity
                    )
                    tls = None if self.plaintext else client_context()
                    try:
                        conn = await connect(host, port, config, tls=tls)
                    except (ConnectionLost, OSError, TimeoutError) as e:
                        failures.append(f"{host}:{port}: {e}")
                        continue
                    if lost is not None:
                        self.failovers += 1
                    self._conn, self._entry = conn, index
                    self._reader = asyncio.get_running_loop().create_task(self._read_replies(conn))
                    return conn
            raise ConnectionLost("no peer answered: " + "; ".join(failures))

    async def _read_replies(self, conn: Connection) -> None:
        try:
            while True:
                reply = await conn.recv()
                rid = getattr(reply, "request_id", None)
                if rid is None and isinstance(reply, Error):
                    raise ConnectionLost(f"peer error: {reply.message} (code {reply.code})")
                waiting = self._waiting.get(rid) if isinstance(rid, str) else None
                if waiting is not None and waiting[0] is conn and not waiting[1].done():
                    waiting[1].set_result(reply)
        except ConnectionLost as e:
            self._lost(conn, e)

    def _lost(self, conn: Connection, error: ConnectionLost) -> None:
        """Fail the requests sent on ``conn``: each is sent again elsewhere."""
        for sent_on, fut in self._waiting.values():
            if sent_on is conn and not fut.done():
                fut.set_exception(error)

    async def _call(self, msg: Message, want: type[Message], request_id: str) -> Any:
        if self._conn is None:
            raise ClientError(0, "client is not connected (use 'async with')")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        conn = self._conn
        losses = 0
        try:
            while True:
                fut: asyncio.Future[Message] = loop.create_future()
                self._waiting[request_id] = (conn, fut)
                try:
                    async with self._send_lock:
                        await conn.send(msg)  # ConnectionLost once closed
                    reply = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
                    break
                except ConnectionLost:
                    # The entry peer is gone before answering: the same request, same id,
                    # to the next peer that answers (each peer about once per request).
                    losses += 1
                    if losses > len(self.addresses) + 1:
                        raise
                    conn = await self._connect(self._entry + 1, conn)
                    self.resent += 1
        finally:
            self._waiting.pop(request_id, None)
        if isinstance(reply, Error):
            raise ClientError(reply.code, reply.message)
        if not isinstance(reply, want):
            raise ClientError(0, f"expected {want.TYPE}, got {reply.TYPE}")
        return reply

    async def infer(
        self,
        image: bytes | str | Path | np.ndarray[Any, Any],
        *,
        model: str = "resnet34",
        strategy: str = "edgeci",
        size: str = "224",
        top_k: int = 5,
        verify: bool = False,
        trace: bool = False,
    ) -> InferResult:
        """Classify an image (encoded bytes, a path, or a 1x3xHxW float32 array; ``size``
        applies to images only). With ``verify`` the peer also runs the unsplit model
        and reports the difference in ``InferResult.max_abs_diff``; with ``trace`` it
        records the request's timeline on every node (``InferResult.trace``,
        ``core/timeline.Timeline.to_dict``)."""
        rid = secrets.token_hex(8)
        if isinstance(image, str | Path):
            image = Path(image).read_bytes()
        opts: dict[str, Any] = dict(strategy=strategy, size=size, top_k=top_k, verify=verify)
        if trace:  # absent otherwise: an older peer's strict decoding never sees the key
            opts["trace"] = True
        if isinstance(image, bytes):
            req = InferRequest(rid, model, image=image, **opts)
        else:
            arr = np.ascontiguousarray(image, dtype=np.float32)
            req = InferRequest(rid, model, tensor=arr, **opts)
        result: InferResult = await self._call(req, InferResult, rid)
        return result

    async def peers(self) -> list[dict[str, Any]]:
        rid = secrets.token_hex(8)
        res: PeersResult = await self._call(Peers(rid), PeersResult, rid)
        return list(res.body.get("peers", []))

    async def plan(
        self, model: str, strategy: str = "edgeci", size: tuple[int, int] = (224, 224)
    ) -> dict[str, Any]:
        rid = secrets.token_hex(8)
        body = PlanOptions(model, strategy, size).to_dict()
        res: PlanResult = await self._call(PlanRequest(rid, body), PlanResult, rid)
        return dict(res.body)


class SyncClient:
    """A blocking wrapper around :class:`Client` for scripts."""

    def __init__(self, address: str | Sequence[str] = (), **kwargs: Any) -> None:
        self._address, self._kwargs = address, kwargs

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def go() -> Any:
            async with Client(self._address, **self._kwargs) as c:
                return await getattr(c, method)(*args, **kwargs)

        return asyncio.run(go())

    def infer(self, image: Any, **kwargs: Any) -> InferResult:
        result: InferResult = self._run("infer", image, **kwargs)
        return result

    def peers(self) -> list[dict[str, Any]]:
        peers: list[dict[str, Any]] = self._run("peers")
        return peers

    def plan(
        self, model: str, strategy: str = "edgeci", size: tuple[int, int] = (224, 224)
    ) -> dict[str, Any]:
        body: dict[str, Any] = self._run("plan", model, strategy, size)
        return body


__all__ = [
    "Client",
    "ClientError",
    "ConnectionLost",
    "SyncClient",
    "parse_address",
    "parse_addresses",
    "read_key",
]

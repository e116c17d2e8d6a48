"""Client API: ``async with Client("host:port") as c: r = await c.infer(image, model=...)``."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
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


class Client:
    """One connection to any peer. Requests may overlap: replies are matched by request id,
    so a stream can keep several frames in flight on one connection."""

    def __init__(
        self,
        address: str,
        *,
        key: bytes | None = None,
        timeout: float = 300.0,
        plaintext: bool = False,
    ) -> None:
        """TLS 1.3 bound to the handshake unless ``plaintext`` (which the peer must
        run with too); ``key`` proves cluster membership."""
        self.host, self.port = parse_address(address)
        self.key = key
        self.plaintext = plaintext
        self.timeout = timeout
        self._conn: Connection | None = None
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def __aenter__(self) -> Client:
        ident = Identity.generate("edgeci-p2p client")
        config = SessionConfig(node_id=ident.node_id, role="client", key=self.key, identity=ident)
        tls = None if self.plaintext else client_context()
        self._conn = await connect(self.host, self.port, config, tls=tls)
        self._reader = asyncio.get_running_loop().create_task(self._read_replies(self._conn))
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

    async def _read_replies(self, conn: Connection) -> None:
        try:
            while True:
                reply = await conn.recv()
                rid = getattr(reply, "request_id", None)
                if rid is None and isinstance(reply, Error):
                    raise ConnectionLost(f"peer error: {reply.message} (code {reply.code})")
                fut = self._waiting.get(rid) if isinstance(rid, str) else None
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        except ConnectionLost as e:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(e)

    async def _call(self, msg: Message, want: type[Message], request_id: str) -> Any:
        if self._conn is None:
            raise ClientError(0, "client is not connected (use 'async with')")
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        try:
            async with self._send_lock:
                await self._conn.send(msg)
            reply = await asyncio.wait_for(fut, self.timeout)
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

    def __init__(self, address: str, **kwargs: Any) -> None:
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


__all__ = ["Client", "ClientError", "ConnectionLost", "SyncClient", "parse_address", "read_key"]

"""The sans-IO protocol session: bytes in, events out; messages in, bytes out.

Theory of operation
-------------------
A :class:`Session` owns one connection's protocol state and does no I/O (after
h11). The caller, an asyncio shell, does three things:

* feeds every received chunk to :meth:`Session.receive_data` (``b""`` at EOF)
  and then drains :meth:`Session.next_event` until it returns None;
* writes whatever :meth:`Session.data_to_send` returns after draining (frames
  the session produced itself: our ``auth`` proof, an ``error`` frame);
* writes what :meth:`Session.send` returns for each message it wants to send.

Both sides send ``hello`` at once (:meth:`Session.start`); neither waits for the
other, so there is no client/server asymmetry. The handshake then moves through
the table ``_ALLOWED`` below: a message type that is not listed for the current
state is a violation. With a cluster key configured both sides send ``auth``
after seeing the other's hello, and nothing but ``auth`` (or ``error``) is
accepted until the peer's proof checks out. Timeouts (a peer that never sends
its hello) are the caller's business: the session has no clock.

A remote violation is turned into a :class:`RemoteProtocolError`: the session
queues an ``error`` frame with its wire code, moves to CLOSED and raises from
:meth:`next_event`; the caller writes :meth:`data_to_send` and closes. Local
misuse raises :class:`LocalProtocolError` and changes nothing.

Tensors larger than ``chunk_bytes`` are sent as a reference in the message and
``chunk`` frames after it; the receiver allocates the announced size (checked
against ``max_pending_bytes`` first) and emits the message once all its chunks
are in. Other messages may overtake it in the meantime.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

import numpy as np

from edgeci_p2p.wire import auth, framing, identity, messages, tensors
from edgeci_p2p.wire.errors import (
    ErrorCode,
    LocalProtocolError,
    MessageError,
    ProtocolError,
    RemoteProtocolError,
    is_fatal,
)
from edgeci_p2p.wire.messages import Chunk, Hello, Message

DEFAULT_CHUNK_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MAX_PENDING: Final = 256 * 1024 * 1024
DEFAULT_ZERO_SUPPRESS_BYTES: Final = tensors.ZERO_SUPPRESS_MIN_BYTES


class State(Enum):
    START = "start"
    """Created; :meth:`Session.start` not called yet."""
    AWAIT_HELLO = "await_hello"
    """Our hello is out; waiting for the peer's."""
    AWAIT_AUTH = "await_auth"
    """Hellos exchanged, our proof is out; waiting for the peer's proof."""
    OPEN = "open"
    """Handshake done; application messages flow both ways."""
    CLOSED = "closed"
    """Closed by an error (either side) or EOF; nothing more is processed."""


_HANDSHAKE_TYPES: Final = frozenset({"hello", "auth"})
_APP_TYPES: Final = frozenset(messages.MESSAGE_TYPES) - _HANDSHAKE_TYPES

# Incoming message types accepted in each state, and the wire code for anything else.
_ALLOWED: Final[dict[State, tuple[frozenset[str], ErrorCode, str]]] = {
    State.AWAIT_HELLO: (
        frozenset({"hello", "error"}),
        ErrorCode.UNEXPECTED_MESSAGE,
        "the first message must be hello",
    ),
    State.AWAIT_AUTH: (
        frozenset({"auth", "error"}),
        ErrorCode.AUTH_REQUIRED,
        "auth must follow hello (a cluster key is configured, or the connection is TLS)",
    ),
    State.OPEN: (_APP_TYPES, ErrorCode.UNEXPECTED_MESSAGE, "the handshake is over"),
}


@dataclass(frozen=True)
class SessionConfig:
    """This side's identity and limits."""

    node_id: str
    name: str = ""
    port: int = 0
    """Our listening port, announced in hello (0 for a client)."""
    models: dict[str, str] = field(default_factory=dict)
    """Model name -> weights fingerprint we serve."""
    role: str = "peer"
    key: bytes | None = None
    """Cluster key; when set, both sides must authenticate."""
    max_frame: int = framing.DEFAULT_MAX_FRAME
    """Largest frame accepted and sent."""
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """Tensors with more bytes than this are sent in chunks."""
    zero_suppress_bytes: int | None = DEFAULT_ZERO_SUPPRESS_BYTES
    """Float tensors of at least this many bytes are sent zero-suppressed (in chunks)
    when that takes at most 90% of their bytes; None sends every tensor plain."""
    max_pending_bytes: int = DEFAULT_MAX_PENDING
    """Most bytes of announced chunked tensors held at once."""
    max_streams: int = 64
    """Most chunked tensors announced and not yet complete at once."""
    max_depth: int = 32
    """Deepest CBOR nesting accepted."""
    identity: identity.Identity | None = None
    """This node's key pair and certificate; needed over TLS (:class:`Channel`)."""
    allow_peers: frozenset[str] | None = None
    """When set, only peers (role ``peer``) with these node ids are let in."""

    def __post_init__(self) -> None:
        if self.key is not None:
            auth.check_key(self.key)
        if not 0 < self.chunk_bytes < self.max_frame - 1024:
            raise ValueError("chunk_bytes must be positive and leave room under max_frame")


@dataclass(frozen=True)
class Channel:
    """What TLS showed this side of a connection; a ``--plaintext`` one has none.

    The listening side presented its certificate in TLS; the dialling side saw it
    (``peer_cert``). The dialling side's certificate travels in its hello and is
    proven by its signature in ``auth``. Both sides bind the proof and the signature
    to the two fingerprints as they know them (:func:`edgeci_p2p.wire.auth.channel`)."""

    listener: bool
    """This side accepted the connection (its certificate is the TLS server's)."""
    peer_cert: bytes | None = None
    """The dialling side: the certificate the listener presented in TLS (DER)."""


@dataclass(frozen=True)
class Established:
    """The handshake finished; application messages may flow."""

    peer: Hello
    authenticated: bool
    """True when both sides proved the cluster key."""


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer went away: EOF, or after a connection-fatal error it sent."""

    code: int | None
    """The fatal error code the peer sent, None for a plain EOF."""
    message: str


Event = Established | ConnectionClosed | Message


@dataclass
class _Pending:
    """A received message waiting for the chunks of its tensors."""

    body: dict[str, Any]
    streams: dict[str, tensors.TensorAssembler]


class Session:
    def __init__(
        self,
        config: SessionConfig,
        *,
        nonce: bytes | None = None,
        replay_guard: auth.ReplayGuard | None = None,
        channel: Channel | None = None,
    ) -> None:
        if channel is not None and config.identity is None:
            raise ValueError("a TLS session needs this node's identity (SessionConfig.identity)")
        if channel is not None and not channel.listener and channel.peer_cert is None:
            raise ValueError("the dialling side of a TLS session needs the listener's certificate")
        self.config = config
        self.channel = channel
        self._binding = b""
        self._peer_cert: bytes | None = None
        self._refusal: RemoteProtocolError | None = None
        """A fault found in the peer's hello over TLS, raised when its auth arrives: our
        own auth still goes out first, so that the other side (behind a relay that
        terminates TLS) finds the mismatch too and refuses on its own."""
        self.nonce = nonce if nonce is not None else secrets.token_bytes(auth.NONCE_BYTES)
        self.peer: Hello | None = None
        self._guard = replay_guard
        self._state = State.START
        self._reader = framing.FrameReader(config.max_frame)
        self._eof = False
        self._outbox: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending: dict[int, _Pending] = {}  # by stream id
        self._pending_bytes = 0
        self._next_stream = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Received bytes not yet turned into events (non-zero: a frame is mid-way)."""
        return self._reader.buffered

    # --- sending ------------------------------------------------------------------

    def start(self) -> bytes:
        """Our hello frame: write it first."""
        if self._state is not State.START:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "start() called twice")
        c = self.config
        hello = Hello(
            version=messages.PROTOCOL_VERSION,
            node_id=c.node_id,
            name=c.name,
            port=c.port,
            models=dict(c.models),
            nonce=self.nonce,
            role=c.role,
            auth=c.key is not None,
            cert=c.identity.cert_der if self.channel is not None and c.identity else None,
        )
        self._state = State.AWAIT_HELLO
        return self._frame(hello.to_wire())

    def send(self, message: Message) -> bytes:
        """Frames for ``message`` (after anything the session queued): write them in order."""
        if isinstance(message, Hello | messages.Auth | Chunk):
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"{message.TYPE} is sent by the session itself"
            )
        if self._state is not State.OPEN and not isinstance(message, messages.Error):
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"cannot send {message.TYPE} in state {self._state.value}",
            )
        if self._state is State.CLOSED:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "the session is closed")
        frames = self._outbox
        self._outbox = []
        body = message.to_wire()
        chunks: list[tuple[int, list[memoryview]]] = []
        sparse_from = self.config.zero_suppress_bytes
        for name in message.TENSOR_FIELDS:
            value = body.get(name)
            if not isinstance(value, np.ndarray):
                continue
            packed = None
            if sparse_from is not None and value.nbytes >= sparse_from:
                packed = tensors.zero_suppress(value)
            if packed is None and value.nbytes <= self.config.chunk_bytes:
                continue
            stream = self._next_stream
            self._next_stream = (self._next_stream + 1) % 2**32
            if packed is None:
                parts = tensors.split_chunks(value, self.config.chunk_bytes)
                nnz = None
            else:
                parts = tensors.split_bytes(packed.body, self.config.chunk_bytes)
                nnz = packed.nnz
            dtype = tensors.contiguous_le(value).dtype.name
            ref = tensors.ChunkRef(stream, dtype, value.shape, len(parts), nnz)
            body[name] = ref.to_dict()
            chunks.append((stream, parts))
        frames.append(self._frame(body))
        for stream, parts in chunks:
            for i, part in enumerate(parts):
                chunk = {"type": "chunk", "stream": stream, "index": i, "data": part}
                frames.append(self._frame(chunk))
        if isinstance(message, messages.Error) and is_fatal(message.code):
            self._state = State.CLOSED
        return b"".join(frames)

    def data_to_send(self) -> bytes:
        """Frames the session produced while processing input (auth, error)."""
        out = b"".join(self._outbox)
        self._outbox = []
        return out

    def _frame(self, body: dict[str, Any]) -> bytes:
        try:
            return framing.encode_frame(body, max_frame=self.config.max_frame)
        except tensors.TensorError as e:
            raise LocalProtocolError(ErrorCode.INVALID_MESSAGE, str(e)) from None

    # --- receiving ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means the peer closed its side."""
        if self._eof:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "data after EOF")
        if not data:
            self._eof = True
        elif self._state is not State.CLOSED:
            self._reader.feed(data)

    def next_event(self) -> Event | None:
        """The next event, or None until more data arrives.

        Raises RemoteProtocolError (once) when the peer broke the protocol.
        """
        if self._state is State.START:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "call start() first")
        try:
            while not self._events and self._state is not State.CLOSED:
                payload = self._reader.next_frame()
                if payload is None:
                    if self._eof:
                        self._at_eof()
                    break
                self._handle(framing.decode_payload(payload, max_depth=self.config.max_depth))
        except RemoteProtocolError as e:
            self._fail(e)
            raise
        return self._events.popleft() if self._events else None

    def _at_eof(self) -> None:
        if self._reader.buffered:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "connection closed mid-frame")
        if self._pending:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "connection closed mid-tensor")
        self._state = State.CLOSED
        self._events.append(ConnectionClosed(None, "connection closed by the peer"))

    def _fail(self, e: ProtocolError) -> None:
        if self._state is not State.CLOSED:
            self._outbox.append(self._frame(messages.Error(e.code.value, e.message).to_wire()))
        self._state = State.CLOSED

    def _handle(self, item: object) -> None:
        kind = item.get("type") if isinstance(item, dict) else None
        allowed, code, why = _ALLOWED[self._state]
        if isinstance(kind, str) and kind in messages.MESSAGE_TYPES and kind not in allowed:
            raise RemoteProtocolError(code, f"{kind} received in state {self._state.value}: {why}")
        assert isinstance(item, dict) or kind is None
        if kind == "chunk":
            self._chunk(self._parse(item))
        elif self._state is State.OPEN and isinstance(item, dict) and self._has_refs(item):
            self._hold(item)
        else:
            self._dispatch(self._parse(item))

    @staticmethod
    def _parse(item: object) -> Message:
        try:
            return messages.message_from_wire(item)
        except MessageError as e:
            raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, str(e)) from None

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, Hello):
            self._on_hello(msg)
        elif isinstance(msg, messages.Auth):
            self._on_auth(msg)
        else:
            self._events.append(msg)
            if isinstance(msg, messages.Error) and is_fatal(msg.code):
                self._state = State.CLOSED
                self._events.append(ConnectionClosed(msg.code, msg.message))

    def _on_hello(self, hello: Hello) -> None:
        if hello.version != messages.PROTOCOL_VERSION:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.version}, this peer speaks {messages.PROTOCOL_VERSION}",
            )
        key = self.config.key
        if hello.nonce == self.nonce:
            raise RemoteProtocolError(ErrorCode.AUTH_FAILED, "the peer echoed our own nonce")
        if self._guard is not None and not self._guard.first_use(hello.nonce):
            raise RemoteProtocolError(ErrorCode.AUTH_FAILED, "the peer reused a nonce (replay)")
        if key is not None and not hello.auth:
            raise RemoteProtocolError(
                ErrorCode.AUTH_REQUIRED, "a cluster key is configured here; the peer has none"
            )
        if key is None and hello.auth:
            raise RemoteProtocolError(
                ErrorCode.AUTH_FAILED, "the peer wants to authenticate; no cluster key is set here"
            )
        self.peer = hello
        if self.channel is None:
            if key is None:
                self._open(authenticated=False)
                return
            mine = auth.proof(key, self.config.node_id, hello.node_id, hello.nonce, self.nonce)
            self._outbox.append(self._frame(messages.Auth(mine).to_wire()))
            self._state = State.AWAIT_AUTH
            return
        self._bind(hello)
        me = self.config
        assert me.identity is not None
        args = (me.node_id, hello.node_id, hello.nonce, self.nonce, self._binding)
        proof = None if key is None else auth.proof(key, *args)
        signature = me.identity.sign(auth.signed_message(*args))
        self._outbox.append(self._frame(messages.Auth(proof, signature).to_wire()))
        self._state = State.AWAIT_AUTH

    def _bind(self, hello: Hello) -> None:
        """Over TLS: the peer's certificate (the one TLS showed, or its hello's), the
        node id it makes, and the channel binding as this side knows it."""
        assert self.channel is not None and self.config.identity is not None
        cert = hello.cert if self.channel.listener else self.channel.peer_cert
        if cert is None:
            raise RemoteProtocolError(ErrorCode.AUTH_FAILED, "the peer's hello has no certificate")
        try:
            claimed = identity.node_id_of(cert)
        except identity.IdentityError as e:
            raise RemoteProtocolError(ErrorCode.AUTH_FAILED, f"peer certificate: {e}") from None
        if claimed != hello.node_id:
            self._refusal = RemoteProtocolError(
                ErrorCode.AUTH_FAILED,
                f"node id {hello.node_id!r} is not the one the TLS certificate's key makes "
                "(a relay terminates TLS in between?)",
            )
        mine, theirs = self.config.identity.fingerprint, identity.fingerprint(cert)
        pair = (mine, theirs) if self.channel.listener else (theirs, mine)
        self._binding = auth.channel(*pair)
        self._peer_cert = cert

    def _on_auth(self, msg: messages.Auth) -> None:
        assert self.peer is not None
        peer, me = self.peer, self.config
        args = (peer.node_id, me.node_id, self.nonce, peer.nonce, self._binding)
        if self._refusal is not None:
            raise self._refusal
        if me.key is not None and (msg.proof is None or not auth.verify(me.key, msg.proof, *args)):
            why = "wrong proof: the peer lacks the key"
            if self.channel is not None:
                why += " or a relay terminates TLS in between"
            raise RemoteProtocolError(ErrorCode.AUTH_FAILED, why)
        cert = self._peer_cert
        if cert is not None and (
            msg.signature is None
            or not identity.verify(cert, msg.signature, auth.signed_message(*args))
        ):
            raise RemoteProtocolError(
                ErrorCode.AUTH_FAILED,
                "the peer's signature does not cover this TLS channel "
                "(a relay terminates TLS in between)",
            )
        self._open(authenticated=me.key is not None)

    def _open(self, *, authenticated: bool) -> None:
        assert self.peer is not None
        allow = self.config.allow_peers
        if allow is not None and self.peer.role == "peer" and self.peer.node_id not in allow:
            raise RemoteProtocolError(
                ErrorCode.PEER_NOT_ALLOWED,
                f"node id {self.peer.node_id} is not on this peer's allow-list",
            )
        self._state = State.OPEN
        self._events.append(Established(self.peer, authenticated=authenticated))

    # --- chunked tensors ----------------------------------------------------------------

    @staticmethod
    def _has_refs(item: dict[str, Any]) -> bool:
        kind = item.get("type")
        cls = messages.MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
        return cls is not None and any(isinstance(item.get(f), dict) for f in cls.TENSOR_FIELDS)

    def _hold(self, item: dict[str, Any]) -> None:
        cls = messages.MESSAGE_TYPES[item["type"]]
        streams: dict[str, tensors.TensorAssembler] = {}
        total = 0
        refs: list[tuple[str, tensors.ChunkRef]] = []
        bad = ErrorCode.INVALID_MESSAGE
        for name in cls.TENSOR_FIELDS:
            value = item.get(name)
            if not isinstance(value, dict):
                continue
            try:
                ref = tensors.ChunkRef.from_dict(value)
            except tensors.TensorError as e:
                raise RemoteProtocolError(bad, f"{cls.TYPE}.{name}: {e}") from None
            if ref.stream in self._pending or any(r.stream == ref.stream for _, r in refs):
                raise RemoteProtocolError(bad, f"stream {ref.stream} already in use")
            if ref.chunks > max(1, ref.nbytes):
                raise RemoteProtocolError(bad, f"stream {ref.stream}: more chunks than bytes")
            total += ref.held_bytes
            refs.append((name, ref))
        if len(self._pending) + len(refs) > self.config.max_streams:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"more than {self.config.max_streams} chunked tensors in flight",
            )
        if self._pending_bytes + total > self.config.max_pending_bytes:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"chunked tensors of {total} bytes exceed the limit of "
                f"{self.config.max_pending_bytes - self._pending_bytes} bytes left",
            )
        # Limits checked: only now allocate.
        pending = _Pending(dict(item), streams)
        for name, ref in refs:
            streams[name] = tensors.TensorAssembler(ref)
            self._pending[ref.stream] = pending
        self._pending_bytes += total

    def _chunk(self, msg: Message) -> None:
        assert isinstance(msg, Chunk)
        pending = self._pending.get(msg.stream)
        if pending is None:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"chunk for unknown stream {msg.stream}"
            )
        name = next(n for n, a in pending.streams.items() if a.ref.stream == msg.stream)
        assembler = pending.streams[name]
        try:
            assembler.add(msg.index, memoryview(msg.data))
            if not assembler.complete:
                return
            array = assembler.array()
        except tensors.TensorError as e:
            raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, str(e)) from None
        del self._pending[msg.stream]
        self._pending_bytes -= assembler.ref.held_bytes
        pending.body[name] = array
        if all(a.complete for a in pending.streams.values()):
            self._dispatch(self._parse(pending.body))

"""A minimal edgeci-p2p client written from ``docs/protocol.md`` alone.

It is what a third party would write: for the wire it uses only ``cbor2``,
``numpy`` and the standard library, never ``edgeci_p2p``. The section numbers
below are the document's. ``tests/test_protocol_conformance.py`` runs it against
a live peer, so that the document and the daemon keep agreeing.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
import numpy as np

VERSION = 2
MAX_FRAME = 64 * 1024 * 1024  # section 2: the default maximum
AUTH_LABEL = b"edgeci-p2p auth v1"  # section 6
TAG_NDARRAY, TAG_UINT8, TAG_F16, TAG_F32 = 40, 64, 84, 85  # section 5.1
DTYPES = {TAG_F32: np.dtype("<f4"), TAG_F16: np.dtype("<f2"), TAG_UINT8: np.dtype("u1")}
TAG_OF = {"float32": TAG_F32, "float16": TAG_F16, "uint8": TAG_UINT8}


class Closed(Exception):
    """The peer closed the connection (EOF)."""


class PeerError(Exception):
    """The peer sent an ``error`` message (section 7)."""

    def __init__(self, msg: dict[str, Any]) -> None:
        super().__init__(f"{msg.get('message')} (code {msg.get('code')})")
        self.code: int = msg["code"]
        self.msg = msg


# --- section 5: tensors --------------------------------------------------------------


def tensor(array: np.ndarray) -> cbor2.CBORTag:
    """5.1: tag 40 [dims, tag 85/84/64 (little-endian bytes)], row-major."""
    tag = TAG_OF[array.dtype.name]
    data = np.ascontiguousarray(array, dtype=DTYPES[tag]).tobytes()
    return cbor2.CBORTag(TAG_NDARRAY, [list(array.shape), cbor2.CBORTag(tag, data)])


def untensor(value: Any) -> np.ndarray:
    """5.1, checking dtype, rank, dimensions and length before building the array."""
    if not (isinstance(value, cbor2.CBORTag) and value.tag == TAG_NDARRAY):
        raise ValueError(f"not a tensor: {value!r}")
    dims, typed = value.value
    if not (isinstance(typed, cbor2.CBORTag) and typed.tag in DTYPES):
        raise ValueError(f"not a typed array: {typed!r}")
    if not 1 <= len(dims) <= 8 or any(not 0 <= d < 2**31 for d in dims):
        raise ValueError(f"bad dims {dims}")
    dtype = DTYPES[typed.tag]
    if len(typed.value) != math.prod(dims) * dtype.itemsize:
        raise ValueError("tensor length does not match its dims")
    return np.frombuffer(typed.value, dtype=dtype).reshape(dims)


def zero_suppressed(array: np.ndarray) -> bytes:
    """5.4: one bit per value (MSB first, 1 = non-zero bits), then the non-zero values."""
    flat = np.ascontiguousarray(array).reshape(-1)
    bits = flat.view(f"u{flat.dtype.itemsize}") != 0
    return np.packbits(bits).tobytes() + flat[bits].tobytes()


def unsuppress(data: bytes, dtype: np.dtype[Any], shape: list[int], nnz: int) -> np.ndarray:
    n = math.prod(shape)
    mask_bytes = (n + 7) // 8
    if len(data) != mask_bytes + nnz * dtype.itemsize:
        raise ValueError("zero-bitmask byte count")
    bits = np.unpackbits(np.frombuffer(data[:mask_bytes], np.uint8))
    if bits[n:].any() or int(bits[:n].sum()) != nnz:
        raise ValueError("zero-bitmask mask")
    out = np.zeros(n, dtype)
    out[bits[:n].astype(bool)] = np.frombuffer(data[mask_bytes:], dtype)
    return out.reshape(shape)


# --- sections 2 and 3: frames ---------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def encode(msg: dict[str, Any]) -> bytes:
    return frame(cbor2.dumps(msg))


def decode(payload: bytes) -> Any:
    """One CBOR item and nothing after it (section 3; the rest of the strict subset is
    the peer's business as receiver, this client trusts what the peer sends)."""
    buf = io.BytesIO(payload)
    item = cbor2.CBORDecoder(buf).decode()
    if buf.tell() != len(payload):
        raise ValueError("bytes after the CBOR item")
    return item


# --- section 6: the proof -------------------------------------------------------------


def lp(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def proof(
    key: bytes, prover: str, verifier: str, verifier_nonce: bytes, prover_nonce: bytes
) -> bytes:
    data = (
        AUTH_LABEL
        + lp(prover.encode())
        + lp(verifier.encode())
        + lp(verifier_nonce)
        + lp(prover_nonce)
    )
    return hmac.new(key, data, hashlib.sha256).digest()


def read_key_file(path: str) -> bytes:
    """Section 6, the key file: its bytes, leading and trailing whitespace removed."""
    with open(path, "rb") as f:
        return f.read().strip(b" \t\r\n\x0b\x0c")


# --- a connection --------------------------------------------------------------------


@dataclass
class Conn:
    """One TCP connection to a peer, blocking, one message at a time."""

    sock: socket.socket
    node_id: str = field(default_factory=lambda: f"conformance-{os.urandom(4).hex()}")
    nonce: bytes = field(default_factory=lambda: os.urandom(32))
    peer_hello: dict[str, Any] = field(default_factory=dict)
    streams: dict[int, dict[str, Any]] = field(default_factory=dict)
    """5.3: chunked tensors being received, by stream id."""
    waiting: list[tuple[dict[str, Any], list[tuple[str, int]]]] = field(default_factory=list)

    @classmethod
    def open(cls, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> Conn:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # section 1
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, msg: dict[str, Any]) -> None:
        self.send_raw(encode(msg))

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise Closed(f"EOF after {len(out)} of {n} bytes")
            out += got
        return out

    def recv_any(self) -> dict[str, Any]:
        """The next message, chunked tensors reassembled (5.3, 5.4); ``error`` included."""
        while True:
            (length,) = struct.unpack(">I", self._read(4))
            if not 1 <= length <= MAX_FRAME:
                raise ValueError(f"frame length {length}")
            msg = decode(self._read(length))
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise ValueError(f"not a message: {msg!r}")
            if msg["type"] == "chunk":
                done = self._chunk(msg)
                if done is not None:
                    return done
                continue
            refs = [
                (k, v["chunked"]) for k, v in msg.items() if isinstance(v, dict) and "chunked" in v
            ]
            if not refs:
                return msg
            for key, stream in refs:
                self.streams[stream] = {**msg[key], "data": b"", "next": 0}
            self.waiting.append((msg, refs))

    def _chunk(self, c: dict[str, Any]) -> dict[str, Any] | None:
        s = self.streams[c["stream"]]
        if c["index"] != s["next"]:
            raise ValueError("chunk out of order")
        s["data"] += c["data"]
        s["next"] += 1
        if s["next"] < s["chunks"]:
            return None
        for msg, refs in self.waiting:
            if all(self.streams[st]["next"] == self.streams[st]["chunks"] for _, st in refs):
                for key, st in refs:
                    ref = self.streams.pop(st)
                    dtype = np.dtype(ref["dtype"]).newbyteorder("<")
                    if ref.get("encoding") == "zero-bitmask":
                        msg[key] = unsuppress(ref["data"], dtype, ref["shape"], ref["nnz"])
                    else:
                        msg[key] = np.frombuffer(ref["data"], dtype).reshape(ref["shape"])
                self.waiting.remove((msg, refs))
                return msg
        return None

    def recv(self) -> dict[str, Any]:
        """The next message; an ``error`` raises :class:`PeerError`."""
        msg = self.recv_any()
        if msg["type"] == "error":
            raise PeerError(msg)
        return msg

    def expect_closed(self) -> None:
        """Section 7: after a fatal error the peer closes; nothing more arrives."""
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return
        if data:
            raise AssertionError(f"expected EOF, got {data!r}")

    # --- section 6: the handshake ------------------------------------------------------

    def hello(self, *, auth: bool = False, version: int = VERSION) -> dict[str, Any]:
        return {
            "type": "hello",
            "version": version,
            "node_id": self.node_id,
            "name": "",
            "port": 0,
            "models": {},
            "nonce": self.nonce,
            "role": "client",
            "auth": auth,
        }

    def handshake(self, key: bytes | None = None) -> dict[str, Any]:
        self.send(self.hello(auth=key is not None))
        peer = self.recv()
        assert peer["type"] == "hello", peer
        self.peer_hello = peer
        if key is None:
            return peer
        self.send({"type": "auth", "proof": self.proof_for(key)})
        theirs = self.recv()
        assert theirs["type"] == "auth", theirs
        want = proof(key, peer["node_id"], self.node_id, self.nonce, peer["nonce"])
        if not hmac.compare_digest(theirs["proof"], want):
            raise AssertionError("the peer's proof is wrong")
        return peer

    def proof_for(self, key: bytes) -> bytes:
        """Our proof to the peer whose hello we hold."""
        p = self.peer_hello
        return proof(key, self.node_id, p["node_id"], p["nonce"], self.nonce)

    # --- requests ----------------------------------------------------------------------

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return its answer (an ``error`` raises PeerError); pongs
        and other requests' answers in between are skipped."""
        self.send(msg)
        while True:
            reply = self.recv_any()
            if reply.get("request_id") in (msg["request_id"], None) and reply["type"] != "pong":
                if reply["type"] == "error":
                    raise PeerError(reply)
                return reply


def new_id() -> str:
    return os.urandom(8).hex()


def send_chunked(conn: Conn, msg: dict[str, Any], key: str, array: np.ndarray, stream: int) -> None:
    """5.3 + 5.4: ``msg[key]`` as a zero-suppressed chunked tensor in two chunks."""
    data = zero_suppressed(array)
    nnz = int(np.count_nonzero(array.reshape(-1).view(f"u{array.dtype.itemsize}")))
    ref = {
        "chunked": stream,
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "chunks": 2,
        "encoding": "zero-bitmask",
        "nnz": nnz,
    }
    conn.send({**msg, key: ref})
    half = len(data) // 2
    conn.send({"type": "chunk", "stream": stream, "index": 0, "data": data[:half]})
    conn.send({"type": "chunk", "stream": stream, "index": 1, "data": data[half:]})

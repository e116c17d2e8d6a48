"""An independent encoder: frames written by hand from docs/protocol.md.

Nothing here uses the project's encoder to build input: frames are a
``struct``-packed length and literal CBOR bytes, and the proof is computed with
``hmac`` from the formula in the document. In the other direction the
project's frames are read with plain ``cbor2``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import cbor2
import numpy as np

from edgeci_p2p.wire.messages import InferRequest, Ping, TileResult
from edgeci_p2p.wire.session import Established, Session, SessionConfig, State

KEY = b"interop-key-0123456789"
NONCE = bytes(range(16))


def frame(cbor_bytes: bytes) -> bytes:
    return struct.pack(">I", len(cbor_bytes)) + cbor_bytes


def tstr(s: str) -> bytes:
    raw = s.encode()
    assert len(raw) < 24
    return bytes([0x60 | len(raw)]) + raw


# hello from a client "X" that serves vgg16 with fingerprint "ab" and will authenticate
HELLO = frame(
    b"\xa9"  # map, 9 pairs
    + tstr("type") + tstr("hello")
    + tstr("version") + b"\x02"
    + tstr("node_id") + tstr("X")
    + tstr("name") + b"\x60"
    + tstr("port") + b"\x19\x1b\x9e"  # 7070 as a 2-byte argument
    + tstr("models") + b"\xa1" + tstr("vgg16") + tstr("ab")
    + tstr("nonce") + b"\x50" + NONCE  # byte string, 16 bytes
    + tstr("role") + tstr("client")
    + tstr("auth") + b"\xf5"
)  # fmt: skip


def lp(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def test_hand_written_handshake_ping_and_tensors_are_accepted() -> None:
    server = Session(SessionConfig("S", name="server", port=7000, key=KEY))
    server_hello = server.start()
    server.receive_data(HELLO)
    assert server.next_event() is None and server.state is State.AWAIT_AUTH

    # the server's hello and proof, read with plain cbor2
    hello = cbor2.loads(server_hello[4:])
    assert struct.unpack(">I", server_hello[:4])[0] == len(server_hello) - 4
    assert hello["type"] == "hello" and hello["version"] == 2 and hello["node_id"] == "S"
    assert hello["auth"] is True and len(hello["nonce"]) >= 16
    proof_frame = server.data_to_send()
    server_proof = cbor2.loads(proof_frame[4:])
    expected = hmac.new(
        KEY,
        b"edgeci-p2p auth v1" + lp(b"S") + lp(b"X") + lp(NONCE) + lp(hello["nonce"]),
        hashlib.sha256,
    ).digest()
    assert server_proof == {"type": "auth", "proof": expected}

    # our proof, by the document's formula
    mine = hmac.new(
        KEY,
        b"edgeci-p2p auth v1" + lp(b"X") + lp(b"S") + lp(hello["nonce"]) + lp(NONCE),
        hashlib.sha256,
    ).digest()
    server.receive_data(
        frame(b"\xa2" + tstr("type") + tstr("auth") + tstr("proof") + b"\x58\x20" + mine)
    )
    ev = server.next_event()
    assert isinstance(ev, Established) and ev.authenticated
    assert ev.peer.models == {"vgg16": "ab"} and ev.peer.role == "client" and ev.peer.port == 7070

    # ping with a half-precision time (f9 3e00 = 1.5)
    server.receive_data(
        frame(
            b"\xa3"
            + tstr("type")
            + tstr("ping")
            + tstr("seq")
            + b"\x07"
            + tstr("time")
            + b"\xf9\x3e\x00"
        )
    )
    assert server.next_event() == Ping(7, 1.5)

    # a tile result whose output is tag 40 [[1,2,2,2], tag 85 <32 bytes float32-LE>]
    values = [0.5, -1.0, 2.0, 3.25, 0.0, 1e-3, -7.5, 100.0]
    tensor = (
        b"\xd8\x28\x82"
        + b"\x84\x01\x02\x02\x02"
        + b"\xd8\x55\x58\x20"
        + struct.pack("<8f", *values)
    )
    body = (
        b"\xa5"
        + tstr("type") + tstr("tile_result")
        + tstr("request_id") + tstr("r1")
        + tstr("tile_id") + b"\x03"
        + tstr("output") + tensor
        + tstr("compute_s") + b"\xfb" + struct.pack(">d", 0.125)
    )  # fmt: skip
    data = frame(body)
    server.receive_data(data[:5])  # arrives in two pieces
    assert server.next_event() is None
    server.receive_data(data[5:])
    result = server.next_event()
    assert isinstance(result, TileResult) and result.tile_id == 3 and result.compute_s == 0.125
    assert result.output.shape == (1, 2, 2, 2) and result.output.dtype == np.float32
    assert result.output.ravel().tolist() == np.array(values, np.float32).tolist()

    # an infer request carrying a float16 tensor (tag 84), 1x3x1x2
    halves = [1.0, 2.0, -0.5, 0.25, 3.0, 65504.0]
    tensor16 = b"\xd8\x28\x82\x84\x01\x03\x01\x02\xd8\x54\x4c" + struct.pack("<6e", *halves)
    body = (
        b"\xa4"
        + tstr("type") + tstr("infer_request")
        + tstr("request_id") + tstr("r2")
        + tstr("model") + tstr("vgg16")
        + tstr("tensor") + tensor16
    )  # fmt: skip
    server.receive_data(frame(body))
    req = server.next_event()
    assert isinstance(req, InferRequest) and req.image is None and req.top_k == 5
    assert req.tensor is not None and req.tensor.dtype == np.float16
    assert req.tensor.ravel().tolist() == halves


def test_project_frames_decode_with_plain_cbor2() -> None:
    a = Session(SessionConfig("A"))
    b = Session(SessionConfig("B"))
    b.receive_data(a.start())
    a.receive_data(b.start())
    assert isinstance(a.next_event(), Established) and isinstance(b.next_event(), Established)
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 4)).astype(np.float32)
    data = a.send(TileResult("r", 1, x, 0.5))
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    decoded = cbor2.loads(data[4:])
    assert decoded["type"] == "tile_result" and decoded["compute_s"] == 0.5
    out = decoded["output"]
    assert isinstance(out, cbor2.CBORTag) and out.tag == 40
    dims, typed = out.value
    assert list(dims) == [1, 3, 5, 4] and typed.tag == 85
    assert np.array_equal(np.frombuffer(typed.value, "<f4").reshape(dims), x)

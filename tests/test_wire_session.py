"""The sans-IO session: handshake, authentication, violations, chunked tensors."""

from __future__ import annotations

import numpy as np
import pytest

from edgeci_p2p.wire import auth, framing, messages
from edgeci_p2p.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from edgeci_p2p.wire.messages import Auth, Error, Hello, Ping, TileResult
from edgeci_p2p.wire.session import (
    ConnectionClosed,
    Established,
    Event,
    Session,
    SessionConfig,
    State,
)

KEY = b"cluster-key-0123456789abcdef"


def drain(s: Session) -> list[Event]:
    out = []
    while (e := s.next_event()) is not None:
        out.append(e)
    return out


def pump(a: Session, b: Session) -> tuple[list[Event], list[Event]]:
    """Deliver queued frames both ways until quiet; the events each side saw."""
    ea: list[Event] = []
    eb: list[Event] = []
    for _ in range(4):
        ea += drain(a)
        eb += drain(b)
        da, db = a.data_to_send(), b.data_to_send()
        if da:
            b.receive_data(da)
        if db:
            a.receive_data(db)
    return ea, eb


def connect(ka: bytes | None, kb: bytes | None, **kw: object) -> tuple[Session, Session]:
    a = Session(SessionConfig("A", port=7001, models={"vgg16": "f1"}, key=ka, **kw))  # type: ignore[arg-type]
    b = Session(SessionConfig("B", port=7002, key=kb, **kw))  # type: ignore[arg-type]
    b.receive_data(a.start())
    a.receive_data(b.start())
    return a, b


def error_frames(data: bytes) -> list[Error]:
    """The error frames in ``data`` (an auth proof may precede them)."""
    reader = framing.FrameReader()
    reader.feed(data)
    out = []
    while (p := reader.next_frame()) is not None:
        msg = messages.message_from_wire(framing.decode_payload(p))
        if isinstance(msg, Error):
            out.append(msg)
    return out


@pytest.mark.parametrize("key", [None, KEY])
def test_handshake_opens_both_sides(key: bytes | None) -> None:
    a, b = connect(key, key)
    ea, eb = pump(a, b)
    assert a.state is b.state is State.OPEN
    assert [type(e) for e in ea] == [Established] and [type(e) for e in eb] == [Established]
    assert isinstance(eb[0], Established) and eb[0].peer.models == {"vgg16": "f1"}
    assert eb[0].authenticated is (key is not None)
    b.receive_data(a.send(Ping(1, 2.5)))
    assert drain(b) == [Ping(1, 2.5)]


def test_key_never_travels() -> None:
    a, b = connect(KEY, KEY)
    wire = bytearray()
    for _ in range(3):
        for s, o in ((a, b), (b, a)):
            drain(s)
            d = s.data_to_send()
            wire += d
            if d:
                o.receive_data(d)
    assert a.state is State.OPEN
    assert KEY not in wire


def refused(victim: Session, code: ErrorCode) -> None:
    """The victim raises a remote error with ``code``, queues an error frame and closes."""
    with pytest.raises(RemoteProtocolError) as info:
        drain(victim)
    assert info.value.code is code
    assert [e.code for e in error_frames(victim.data_to_send())] == [code.value]
    assert victim.state is State.CLOSED
    assert victim.next_event() is None


def test_wrong_key_is_refused() -> None:
    a, b = connect(KEY, b"some-other-key-0123456789")
    drain(a)
    drain(b)
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    refused(a, ErrorCode.AUTH_FAILED)
    refused(b, ErrorCode.AUTH_FAILED)


def test_peer_without_key_is_refused_where_a_key_is_configured() -> None:
    a, b = connect(KEY, None)
    refused(a, ErrorCode.AUTH_REQUIRED)
    refused(b, ErrorCode.AUTH_FAILED)


def attacker_hello(nonce: bytes, auth_flag: bool = True) -> bytes:
    hello = Hello(2, "M", "mallory", 1, {}, nonce, auth=auth_flag)
    return framing.encode_frame(hello.to_wire())


def test_claiming_auth_but_sending_work_instead_is_refused() -> None:
    victim = Session(SessionConfig("V", key=KEY))
    victim.start()
    victim.receive_data(attacker_hello(b"m" * 32))
    victim.receive_data(framing.encode_frame(Ping(1, 0.0).to_wire()))
    refused(victim, ErrorCode.AUTH_REQUIRED)


def test_skipping_the_handshake_is_refused() -> None:
    for key in (None, KEY):
        victim = Session(SessionConfig("V", key=key))
        victim.start()
        victim.receive_data(framing.encode_frame(Ping(1, 0.0).to_wire()))
        refused(victim, ErrorCode.UNEXPECTED_MESSAGE)


def test_replayed_handshake_fails_against_a_fresh_nonce() -> None:
    # Record an honest peer's hello and auth toward one victim session ...
    honest = Session(SessionConfig("H", key=KEY))
    first = Session(SessionConfig("V", key=KEY))
    first.receive_data(honest.start())
    honest.receive_data(first.start())
    drain(honest)
    recorded = honest.data_to_send()  # the auth frame, made for first's nonce
    first.receive_data(recorded)
    assert isinstance(drain(first)[-1], Established)  # it was a good proof there
    # ... and replay them later to a new session of the same victim.
    victim = Session(SessionConfig("V", key=KEY))
    victim.start()
    victim.receive_data(
        framing.encode_frame(Hello(2, "H", "", 0, {}, honest.nonce, auth=True).to_wire())
    )
    victim.receive_data(recorded)
    refused(victim, ErrorCode.AUTH_FAILED)


def test_replay_guard_refuses_a_reused_nonce_across_sessions() -> None:
    guard = auth.ReplayGuard()
    for expect_ok in (True, False):
        victim = Session(SessionConfig("V", key=KEY), replay_guard=guard)
        victim.start()
        victim.receive_data(attacker_hello(b"r" * 32))
        if expect_ok:
            assert drain(victim) == [] and victim.state is State.AWAIT_AUTH
        else:
            refused(victim, ErrorCode.AUTH_FAILED)


def test_reflected_nonce_and_reflected_proof_are_refused() -> None:
    victim = Session(SessionConfig("V", key=KEY), nonce=b"v" * 32)
    victim.start()
    victim.receive_data(attacker_hello(b"v" * 32))
    refused(victim, ErrorCode.AUTH_FAILED)
    # Reflection: send the victim's own proof back to it.
    victim = Session(SessionConfig("V", key=KEY))
    victim.start()
    victim.receive_data(attacker_hello(b"m" * 32))
    drain(victim)
    own_proof = victim.data_to_send()
    victim.receive_data(own_proof)
    refused(victim, ErrorCode.AUTH_FAILED)


def test_forged_proof_is_refused() -> None:
    victim = Session(SessionConfig("V", key=KEY))
    victim.start()
    victim.receive_data(attacker_hello(b"m" * 32))
    drain(victim)
    guess = auth.proof(b"guessed-key-0123456789", "M", "V", victim.nonce, b"m" * 32)
    victim.receive_data(framing.encode_frame(Auth(guess).to_wire()))
    refused(victim, ErrorCode.AUTH_FAILED)


def test_unsupported_version_is_refused() -> None:
    victim = Session(SessionConfig("V"))
    victim.start()
    hello = {**Hello(2, "M", "", 0, {}, b"m" * 16).to_wire(), "version": 1}
    victim.receive_data(framing.encode_frame(hello))
    refused(victim, ErrorCode.UNSUPPORTED_VERSION)


def test_second_hello_is_a_violation() -> None:
    a, b = connect(None, None)
    pump(a, b)
    b.receive_data(attacker_hello(b"z" * 16, auth_flag=False))
    refused(b, ErrorCode.UNEXPECTED_MESSAGE)


def test_garbage_after_handshake_answers_with_an_error_frame() -> None:
    a, b = connect(None, None)
    pump(a, b)
    b.receive_data(b"\x00\x00\x00\x02\x01\x02")
    refused(b, ErrorCode.MALFORMED_FRAME)
    b.receive_data(b"more")  # ignored once closed
    assert b.next_event() is None


def test_local_misuse_changes_nothing() -> None:
    s = Session(SessionConfig("A"))
    with pytest.raises(LocalProtocolError):
        s.next_event()
    s.start()
    with pytest.raises(LocalProtocolError):
        s.start()
    with pytest.raises(LocalProtocolError):
        s.send(Ping(1, 0.0))  # not open yet
    a, b = connect(None, None)
    pump(a, b)
    with pytest.raises(LocalProtocolError):
        a.send(Hello(2, "A", "", 0, {}, b"x" * 16))
    assert a.state is State.OPEN


def test_fatal_error_from_peer_closes_and_application_error_does_not() -> None:
    a, b = connect(None, None)
    pump(a, b)
    b.receive_data(a.send(Error(203, "busy", request_id="r1")))
    assert drain(b) == [Error(203, "busy", request_id="r1")]
    assert b.state is State.OPEN and a.state is State.OPEN
    b.receive_data(a.send(Error(150, "shutting down")))
    assert a.state is State.CLOSED
    assert drain(b) == [Error(150, "shutting down"), ConnectionClosed(150, "shutting down")]
    assert b.state is State.CLOSED


def test_eof_clean_and_mid_frame() -> None:
    a, b = connect(None, None)
    pump(a, b)
    b.receive_data(b"")
    assert drain(b) == [ConnectionClosed(None, "connection closed by the peer")]
    a, b = connect(None, None)
    pump(a, b)
    b.receive_data(a.send(Ping(1, 0.0))[:-1])
    b.receive_data(b"")
    refused(b, ErrorCode.MALFORMED_FRAME)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_chunked_tensor_travels_and_other_messages_overtake_it(dtype: type) -> None:
    a, b = connect(KEY, KEY, chunk_bytes=4096)
    pump(a, b)
    x = np.random.default_rng(3).standard_normal((1, 16, 33, 17)).astype(dtype)
    data = a.send(TileResult("r", 2, x, 0.25))
    ping = a.send(Ping(5, 1.0))
    # the ping is spliced in after the message frame, before its chunks
    reader = framing.FrameReader()
    reader.feed(data)
    frames = []
    while (p := reader.next_frame()) is not None:
        frames.append(framing.HEADER.pack(p.nbytes) + bytes(p))
    assert len(frames) == 1 + -(-x.nbytes // 4096)
    b.receive_data(frames[0] + ping + b"".join(frames[1:]))
    events = drain(b)
    assert events[0] == Ping(5, 1.0)
    result = events[1]
    assert isinstance(result, TileResult) and result.tile_id == 2
    assert result.output.dtype == x.dtype and np.array_equal(result.output, x)


def test_chunked_announcement_over_the_limit_is_refused_before_allocating() -> None:
    a, b = connect(None, None)
    pump(a, b)
    ref = {"chunked": 1, "dtype": "float32", "shape": [1, 1024, 1024, 1024], "chunks": 1}
    body = {"type": "tile_result", "request_id": "r", "tile_id": 0, "output": ref, "compute_s": 0.0}
    b.receive_data(framing.encode_frame(body))
    refused(b, ErrorCode.FRAME_TOO_LARGE)


def test_chunk_for_unknown_stream_is_refused() -> None:
    a, b = connect(None, None)
    pump(a, b)
    b.receive_data(framing.encode_frame({"type": "chunk", "stream": 4, "index": 0, "data": b"x"}))
    refused(b, ErrorCode.UNEXPECTED_MESSAGE)


def test_too_many_open_streams_are_refused() -> None:
    a, b = connect(None, None, max_streams=2)
    pump(a, b)
    for stream in range(3):
        ref = {"chunked": stream, "dtype": "float16", "shape": [1, 1, 1, 1], "chunks": 1}
        body = {
            "type": "tile_result",
            "request_id": "r",
            "tile_id": 0,
            "output": ref,
            "compute_s": 0,
        }
        b.receive_data(framing.encode_frame(body))
    refused(b, ErrorCode.FRAME_TOO_LARGE)


def _relu_map(shape: tuple[int, ...], seed: int = 5, dtype: type = np.float32) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return np.maximum(x, 0)


def _through(a: Session, b: Session, x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``x`` sent from ``a`` as a tile result: the bytes on the wire and what ``b`` got."""
    data = a.send(TileResult("r", 1, x, 0.1))
    b.receive_data(data)
    (got,) = drain(b)
    assert isinstance(got, TileResult)
    return data, got.output


def _tile_result_with(ref: dict[str, object]) -> bytes:
    """A tile_result frame whose output is the chunk reference ``ref``."""
    body = {"type": "tile_result", "request_id": "r", "tile_id": 0, "output": ref, "compute_s": 0}
    return framing.encode_frame(body)


def _tile_result_ref(data: bytes) -> dict[str, object]:
    """The tensor reference a tile_result frame announces."""
    reader = framing.FrameReader()
    reader.feed(data)
    first = reader.next_frame()
    assert first is not None
    body = framing.decode_payload(first)
    assert isinstance(body, dict) and isinstance(body["output"], dict)
    return body["output"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_map_after_relu_travels_zero_suppressed_and_arrives_bit_for_bit(dtype: type) -> None:
    a, b = connect(None, None)
    pump(a, b)
    x = _relu_map((1, 64, 28, 28), dtype=dtype)
    x[0, 0, 0, :3] = [-0.0, np.inf, np.nan]  # a signed zero is a value, not a zero
    data = a.send(TileResult("r", 7, x, 0.1))
    ref = _tile_result_ref(data)
    nnz = int(np.count_nonzero(x.view(np.uint32 if dtype == np.float32 else np.uint16)))
    assert ref["encoding"] == "zero-bitmask" and ref["nnz"] == nnz
    assert len(data) < 0.6 * x.nbytes
    b.receive_data(data)
    (got,) = drain(b)
    assert isinstance(got, TileResult)
    assert got.output.dtype == x.dtype and got.output.shape == x.shape
    assert got.output.tobytes() == x.tobytes()


def test_a_dense_map_and_a_small_map_travel_plain() -> None:
    a, b = connect(None, None)
    pump(a, b)
    dense = np.random.default_rng(1).standard_normal((1, 64, 28, 28)).astype(np.float32)
    small = _relu_map((1, 4, 8, 8))
    for x in (dense, small):
        data, out = _through(a, b, x)
        assert len(data) > x.nbytes
        assert np.array_equal(out, x)


def test_zero_suppression_can_be_turned_off() -> None:
    a, b = connect(None, None, zero_suppress_bytes=None)
    pump(a, b)
    x = _relu_map((1, 64, 28, 28))
    data, out = _through(a, b, x)
    assert len(data) > x.nbytes
    assert np.array_equal(out, x)


def test_zero_suppressed_map_larger_than_a_chunk_travels_in_chunks() -> None:
    a, b = connect(None, None, chunk_bytes=10_000)
    pump(a, b)
    x = _relu_map((1, 32, 28, 28))
    data, out = _through(a, b, x)
    ref = _tile_result_ref(data)
    assert ref["encoding"] == "zero-bitmask" and isinstance(ref["chunks"], int)
    assert ref["chunks"] > 1
    assert out.tobytes() == x.tobytes()


def _sparse_frames(mask: bytes, values: np.ndarray, shape: list[int], nnz: int) -> bytes:
    ref = {
        "chunked": 3,
        "dtype": "float32",
        "shape": shape,
        "chunks": 1,
        "encoding": "zero-bitmask",
        "nnz": nnz,
    }
    chunk = {"type": "chunk", "stream": 3, "index": 0, "data": mask + values.tobytes()}
    return _tile_result_with(ref) + framing.encode_frame(chunk)


@pytest.mark.parametrize(
    "mask,values,nnz,why",
    [
        (b"\xa0", np.array([1.0, 2.0, 3.0], np.float32), 3, "marks 2 values"),  # 2 bits, 3 said
        (b"\xa1", np.array([1.0, 2.0, 3.0], np.float32), 3, "padding bits"),  # bit 8 of 7
        (b"\xa0", np.array([1.0], np.float32), 2, "total 5 of 9 bytes"),  # short of nnz
    ],
)
def test_a_wrong_zero_bitmask_closes_the_connection_with_an_error_code(
    mask: bytes, values: np.ndarray, nnz: int, why: str
) -> None:
    a, b = connect(None, None)
    pump(a, b)
    b.receive_data(_sparse_frames(mask, values, [1, 1, 1, 7], nnz))
    with pytest.raises(RemoteProtocolError) as err:
        drain(b)
    assert err.value.code is ErrorCode.INVALID_MESSAGE and why in err.value.message
    assert b.state is State.CLOSED
    assert [e.code for e in error_frames(b.data_to_send())] == [ErrorCode.INVALID_MESSAGE.value]


def test_a_tiny_mask_cannot_announce_a_huge_map() -> None:
    """The receiver's limit counts the decoded size, not the few bytes on the wire."""
    a, b = connect(None, None)
    pump(a, b)
    ref = {
        "chunked": 1,
        "dtype": "float32",
        "shape": [1, 512, 1024, 1024],
        "chunks": 1,
        "encoding": "zero-bitmask",
        "nnz": 0,
    }
    b.receive_data(_tile_result_with(ref))
    refused(b, ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.parametrize(
    "extra",
    [{"encoding": "zlib", "nnz": 1}, {"encoding": "zero-bitmask", "nnz": 99}, {"nnz": 1}],
)
def test_a_chunk_reference_with_a_bad_encoding_is_refused(extra: dict[str, object]) -> None:
    a, b = connect(None, None)
    pump(a, b)
    ref = {"chunked": 1, "dtype": "float32", "shape": [1, 1, 2, 4], "chunks": 1, **extra}
    b.receive_data(_tile_result_with(ref))
    refused(b, ErrorCode.INVALID_MESSAGE)

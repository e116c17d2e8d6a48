"""Fuzzing the receive path: nothing but RemoteProtocolError escapes, memory stays bounded.

Inputs: random bytes, truncations, bit flips and splices of valid frames, fed to
a session before and after its handshake. ``WIRE_FUZZ_EXAMPLES`` sets the cases
per test (default 1500; 20000 with ``HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import contextlib
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeci_p2p.wire import cbor, framing, messages
from edgeci_p2p.wire.errors import ErrorCode, MessageError, RemoteProtocolError
from edgeci_p2p.wire.messages import Hello
from edgeci_p2p.wire.session import ConnectionClosed, Session, SessionConfig, State
from tests.wiresamples import samples

_THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
EXAMPLES = int(os.environ.get("WIRE_FUZZ_EXAMPLES", 20000 if _THOROUGH else 1500))
fuzz = settings(max_examples=EXAMPLES, deadline=None)

LIMITS = {"max_frame": 1 << 20, "chunk_bytes": 256, "max_pending_bytes": 1 << 20}
MEMORY_BOUND = 8 << 20
"""Peak traced allocation allowed while handling one fuzz input (limits are 1 MiB)."""

# Valid application frames (a large tensor so that chunked streams are in the corpus too).
_big = messages.TileResult("r", 9, np.ones((1, 4, 8, 8), np.float32), 0.1)
CORPUS: list[bytes] = []
_src = Session(SessionConfig("A", **LIMITS))  # type: ignore[arg-type]
_dst = Session(SessionConfig("B", **LIMITS))  # type: ignore[arg-type]
_dst.receive_data(_src.start())
_src.receive_data(_dst.start())
_src.next_event()
# fatal errors last: sending one closes the sending session
for _m in sorted([*samples(), _big], key=lambda m: isinstance(m, messages.Error) and m.code < 200):
    if not isinstance(_m, messages.Hello | messages.Auth | messages.Chunk):
        CORPUS.append(_src.send(_m))
HELLO = framing.encode_frame(Hello(2, "F", "fuzzer", 0, {}, b"f" * 16).to_wire())


def one_byte_short(msg: messages.Message) -> bytes:
    """A frame of ``msg`` whose last item, a tensor or byte string, is one byte short:
    the frame's length says so, the item's head still claims every byte. A decoder that
    let a length run one byte past the end built the tensor and raised TensorError
    instead of the promised RemoteProtocolError (issue 21)."""
    wire = msg.to_wire()
    (key,) = (k for k, v in wire.items() if isinstance(v, np.ndarray | bytes))
    frame = framing.encode_frame({**{k: v for k, v in wire.items() if k != key}, key: wire[key]})
    (size,) = framing.HEADER.unpack_from(frame)
    return framing.HEADER.pack(size - 1) + frame[framing.HEADER_SIZE : -1]


MALFORMED: list[bytes] = [
    one_byte_short(messages.TileResult("r", 9, np.ones((1, 2, 3, 3), np.float32), 0.1)),
    one_byte_short(messages.Chunk(0, 0, b"\x00" * 10)),
]
"""Frames every session must refuse with RemoteProtocolError; fuzzed like the corpus."""


def feed(data: bytes, *, handshake: bool, pieces: int = 1) -> None:
    """Feed ``data`` (then EOF) to a session; only RemoteProtocolError may escape."""
    s = Session(SessionConfig("V", **LIMITS))  # type: ignore[arg-type]
    s.start()
    if handshake:
        s.receive_data(HELLO)
        s.next_event()
        assert s.state is State.OPEN
    step = max(1, len(data) // pieces)
    try:
        for i in range(0, len(data), step):
            s.receive_data(data[i : i + step])
            while s.next_event() is not None:
                pass
        s.receive_data(b"")
        while s.next_event() is not None:
            pass
    except RemoteProtocolError:
        assert s.state is State.CLOSED
        assert s.data_to_send()  # an error frame is queued for the peer


@fuzz
@given(st.binary(max_size=4096))
def test_strict_decoder_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        cbor.decode(data)


@fuzz
@given(st.binary(max_size=2048), st.booleans(), st.integers(1, 8))
def test_session_on_random_bytes(data: bytes, handshake: bool, pieces: int) -> None:
    feed(data, handshake=handshake, pieces=pieces)


@fuzz
@given(st.sampled_from(CORPUS + MALFORMED), st.data())
def test_session_on_truncated_frames(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1))
    feed(frame[:cut], handshake=True)


@fuzz
@given(st.sampled_from(CORPUS + MALFORMED), st.lists(st.integers(0, 2**20), min_size=1, max_size=4))
def test_session_on_bit_flips(frame: bytes, flips: list[int]) -> None:
    buf = bytearray(frame)
    for f in flips:
        bit = f % (len(buf) * 8)
        buf[bit // 8] ^= 1 << (bit % 8)
    tracemalloc.start()
    try:
        feed(bytes(buf), handshake=True, pieces=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND


@fuzz
@given(
    st.lists(
        st.tuples(
            st.sampled_from(CORPUS + MALFORMED), st.integers(0, 2**16), st.integers(0, 2**16)
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_session_on_splices(pieces: list[tuple[bytes, int, int]], handshake: bool) -> None:
    data = b"".join(f[min(a, b) % len(f) : max(a, b) % (len(f) + 1)] for f, a, b in pieces)
    feed(data, handshake=handshake, pieces=2)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(sorted({k for m in samples() for k in m.to_wire()} | {"type"}))


@settings(max_examples=max(100, EXAMPLES // 5), deadline=None)
@given(
    st.sampled_from(sorted(messages.MESSAGE_TYPES)), st.dictionaries(field_names, plain, max_size=8)
)
def test_message_validation_on_random_fields(kind: str, fields: dict[str, object]) -> None:
    with contextlib.suppress(MessageError):
        messages.message_from_wire({**fields, "type": kind})


def test_valid_corpus_is_accepted() -> None:
    # The fuzz corpus itself must decode cleanly, or the mutations prove little.
    s = Session(SessionConfig("V", **LIMITS))  # type: ignore[arg-type]
    s.start()
    s.receive_data(HELLO)
    s.next_event()
    s.receive_data(b"".join(CORPUS))
    events = []
    while (e := s.next_event()) is not None:
        events.append(e)
    received = [e for e in events if isinstance(e, messages.Message)]
    assert len(received) == len(CORPUS)
    assert isinstance(events[-1], ConnectionClosed)  # the corpus ends with a fatal error


@pytest.mark.parametrize("frame", MALFORMED, ids=["tensor", "chunk"])
@pytest.mark.parametrize("pieces", [1, 3])
def test_a_frame_whose_last_item_is_one_byte_short_is_a_protocol_error(
    frame: bytes, pieces: int
) -> None:
    payload = memoryview(frame)[framing.HEADER_SIZE :]
    with pytest.raises(RemoteProtocolError) as info:
        cbor.decode(payload)
    assert info.value.code == ErrorCode.MALFORMED_FRAME and "runs past the end" in str(info.value)
    s = Session(SessionConfig("V", **LIMITS))  # type: ignore[arg-type]
    s.start()
    s.receive_data(HELLO)
    s.next_event()
    with pytest.raises(RemoteProtocolError) as info:
        step = -(-len(frame) // pieces)
        for i in range(0, len(frame), step):
            s.receive_data(frame[i : i + step])
            while s.next_event() is not None:
                pass
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    assert s.state is State.CLOSED and s.data_to_send()

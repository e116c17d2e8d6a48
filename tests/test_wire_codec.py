"""The strict CBOR codec, tensors and the frame reader."""

from __future__ import annotations

import math
import struct
import tracemalloc

import cbor2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeci_p2p.wire import cbor, framing, tensors
from edgeci_p2p.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

# --- strictness: each refusal is one literal item --------------------------------------

REFUSED = {
    "trailing byte": "0102",
    "indefinite byte string": "5f4161ff",
    "indefinite text string": "7f6161ff",
    "indefinite array": "9f01ff",
    "indefinite map": "bf616101ff",
    "lone break": "ff",
    "reserved additional info": "1c",
    "shared reference 28/29": "d81c81d81d00",
    "string reference 25": "d90100826161d81900",
    "string reference namespace 256": "d9010081616161",
    "date tag 0": "c074323031332d30332d32315432303a30343a30305a",
    "bignum tag 2": "c249010000000000000000",
    "set tag 258": "d9010283010203",
    "bare typed array 85": "d8554400000000",
    "self-describe 55799": "d9d9f701",
    "undefined": "f7",
    "simple value 16": "f0",
    "simple value 255": "f8ff",
    "integer map key": "a10102",
    "duplicate key": "a2616101616102",
    "invalid utf-8": "62c328",
    "truncated head": "1a0000",
    "truncated string": "45010203",
    "array longer than the item": "9b00000000ffffffff01",
    "map longer than the item": "bb00000000ffffffff0101",
    "byte string longer than the item": "5b7fffffffffffffff00",
    "tensor rank 0": "d828824085400000",
    "tensor rank 9": "d82882890101010101010101d8554400000000",
    "tensor dims not uints": "d8288281 20d8554400000000",
    "tensor float64 tag 86": "d8288281 01d8564800000000 00000000",
    "tensor plain-array content": "d8288281 0181fa00000000",
    "tensor three elements": "d8288381 01d855440000000000",
    "tensor column-major 1040": "d9041082810 1d8554400000000",
    "tensor typed array not bytes": "d8288281 01d85500",
}


@pytest.mark.parametrize("hexdata", REFUSED.values(), ids=REFUSED.keys())
def test_strict_decoder_refuses(hexdata: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        cbor.decode(bytes.fromhex(hexdata.replace(" ", "")))
    assert info.value.code in (ErrorCode.MALFORMED_FRAME, ErrorCode.INVALID_MESSAGE)


def test_plain_cbor2_would_have_accepted_some_of_these() -> None:
    # Why the decoder exists: cbor2.loads is lenient where the protocol must not be.
    assert cbor2.loads(bytes.fromhex("0102")) == 1
    assert cbor2.loads(bytes.fromhex("d9010283010203")) == {1, 2, 3}


def test_depth_limit() -> None:
    # max_depth counts nested containers: 32 arrays pass, 33 do not
    assert cbor.decode(b"\x81" * 32 + b"\x01", max_depth=32) is not None
    with pytest.raises(RemoteProtocolError, match="deeper"):
        cbor.decode(b"\x81" * 33 + b"\x01", max_depth=32)
    with pytest.raises(RemoteProtocolError, match="deeper"):
        cbor.decode(b"\x81" * 100_000 + b"\x01")


def test_tensor_length_mismatch_is_an_invalid_message() -> None:
    # shape [2] float32 needs 8 bytes; 4 are announced
    with pytest.raises(RemoteProtocolError) as info:
        cbor.decode(bytes.fromhex("d828828102d8554400000000"))
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_non_shortest_heads_are_accepted() -> None:
    # 1 as a 64-bit argument, tag 40 with a 4-byte argument, a 2-byte text length
    assert cbor.decode(bytes.fromhex("1b0000000000000001")) == 1
    t = cbor.decode(bytes.fromhex("da00000028828101d8554400008040"))
    assert t.dtype == np.float32 and t.tolist() == [4.0]
    assert cbor.decode(bytes.fromhex("7900026869")) == "hi"


# --- differential: whatever the strict decoder accepts, cbor2 reads the same ------------

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def normalise(x: object) -> object:
    if isinstance(x, memoryview):
        return bytes(x)
    if isinstance(x, list | tuple):
        return [normalise(v) for v in x]
    if isinstance(x, dict):
        return {k: normalise(v) for k, v in x.items()}
    return x


@given(plain)
def test_cbor2_encoded_data_decodes_to_the_same_value(value: object) -> None:
    assert normalise(cbor.decode(cbor2.dumps(value))) == value


@given(plain)
def test_our_encoding_decodes_with_cbor2_and_ours(value: object) -> None:
    data = cbor.encode(value)
    assert normalise(cbor2.loads(data)) == normalise(value)
    assert normalise(cbor.decode(data)) == value


def test_half_and_single_floats_decode() -> None:
    assert cbor.decode(bytes.fromhex("f93e00")) == 1.5
    assert cbor.decode(bytes.fromhex("fa47c35000")) == 100000.0
    assert math.isnan(cbor.decode(bytes.fromhex("f97e00")))


# --- tensors ---------------------------------------------------------------------------

SHAPES = [
    (1,),
    (7,),
    (0,),
    (3, 5),
    (1, 3, 224, 224),
    (2, 64, 7, 9),
    (1, 0, 4, 4),
    (2, 1, 1, 1, 1, 1, 1, 3),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensor_round_trip_zero_copy(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(dtype)
    frame = framing.encode_frame({"t": x})
    payload = memoryview(frame)[framing.HEADER_SIZE :]
    y = cbor.decode(payload)["t"]
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.array_equal(x, y)
    assert y.flags.aligned
    if x.size:
        # decoded in place: the array's memory is the frame's memory
        assert np.shares_memory(y, np.frombuffer(frame, np.uint8))
        assert not y.flags.writeable
    # cbor2 sees a standard RFC 8746 tensor
    tag = cbor2.loads(payload)["t"]
    assert tag.tag == 40 and list(tag.value[0]) == list(shape)
    assert tag.value[1].tag == (85 if dtype is np.float32 else 84)
    assert tag.value[1].value == x.astype(x.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("prefix", range(8))
def test_tensor_data_is_aligned_whatever_precedes_it(prefix: int) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame = framing.encode_frame({"p": "x" * prefix, "t": x})
    start = frame.find(x.tobytes())
    assert start % 4 == 0
    y = cbor.decode(memoryview(frame)[4:])["t"]
    assert np.array_equal(x, y) and y.flags.aligned


@pytest.mark.parametrize("prefix", range(4))
def test_a_bare_item_aligns_its_tensor_data_from_its_own_first_byte(prefix: int) -> None:
    x = np.arange(6, dtype=np.float32)
    item = cbor.encode(["x" * prefix, x])
    assert item.find(x.tobytes()) % 4 == 0


def test_non_contiguous_and_big_endian_tensors_are_sent_as_row_major_little_endian() -> None:
    x = np.arange(24, dtype=">f4").reshape(2, 3, 4)[:, ::2, :]
    y = cbor.decode(cbor.encode(x))
    assert y.dtype == np.dtype("<f4") and np.array_equal(x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_chunked_tensor_reassembles(dtype: type) -> None:
    x = np.random.default_rng(1).standard_normal((1, 5, 13, 11)).astype(dtype)
    parts = tensors.split_chunks(x, 100)
    ref = tensors.ChunkRef(9, np.dtype(dtype).name, x.shape, len(parts))
    assert tensors.ChunkRef.from_dict(ref.to_dict()) == ref
    asm = tensors.TensorAssembler(ref)
    for i, p in enumerate(parts):
        assert not asm.complete
        asm.add(i, p)
    assert asm.complete and np.array_equal(asm.array(), x)


def test_chunk_assembler_refuses_disorder_and_overflow() -> None:
    ref = tensors.ChunkRef(0, "float32", (4,), 2)
    asm = tensors.TensorAssembler(ref)
    with pytest.raises(tensors.TensorError):
        asm.add(1, memoryview(b"\x00" * 8))
    with pytest.raises(tensors.TensorError):
        asm.add(0, memoryview(b"\x00" * 17))
    asm.add(0, memoryview(b"\x00" * 8))
    with pytest.raises(tensors.TensorError):
        asm.add(1, memoryview(b"\x00" * 4))  # last chunk short of the announced size


# --- frames ---------------------------------------------------------------------------


def frames_of(obj_list: list[object]) -> bytes:
    return b"".join(framing.encode_frame(o) for o in obj_list)


@given(st.lists(st.integers(min_value=1, max_value=200), max_size=10))
def test_frame_reader_any_split_points(cuts: list[int]) -> None:
    objs: list[object] = [{"a": 1}, [1, 2, 3], "x" * 300, {"t": np.ones((2, 3), np.float32)}]
    stream = frames_of(objs)
    reader = framing.FrameReader()
    out = []
    pos = 0
    for c in [*cuts, len(stream)]:
        reader.feed(stream[pos : pos + c])
        pos += c
        while (p := reader.next_frame()) is not None:
            out.append(cbor.decode(p))
    assert len(out) == len(objs)
    assert out[:3] == objs[:3]
    assert np.array_equal(out[3]["t"], np.ones((2, 3), np.float32))


def test_oversized_length_is_refused_before_allocating() -> None:
    reader = framing.FrameReader(max_frame=1024)
    tracemalloc.start()
    try:
        reader.feed(struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 10)
        with pytest.raises(RemoteProtocolError) as info:
            reader.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert peak < 64 * 1024


def test_frame_at_the_limit_passes_and_one_over_fails() -> None:
    item = cbor.encode(b"x" * 1000)
    reader = framing.FrameReader(max_frame=len(item))
    reader.feed(struct.pack(">I", len(item)) + item)
    assert reader.next_frame() is not None
    reader = framing.FrameReader(max_frame=len(item) - 1)
    reader.feed(struct.pack(">I", len(item)) + item)
    with pytest.raises(RemoteProtocolError):
        reader.next_frame()


def test_mutable_input_buffers_are_copied() -> None:
    reader = framing.FrameReader()
    buf = bytearray(framing.encode_frame("hello"))
    reader.feed(buf)
    buf[:] = b"\x00" * len(buf)  # the caller reuses its receive buffer
    payload = reader.next_frame()
    assert payload is not None and cbor.decode(payload) == "hello"


@pytest.mark.parametrize("n", [1, 7, 9, 1001])
@pytest.mark.parametrize("zeros", [0.5, 0.95, 1.0])
def test_zero_suppression_round_trips_any_length_bit_for_bit(n: int, zeros: float) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, n)).astype(np.float32)
    x[rng.random((1, n)) < zeros] = 0.0
    packed = tensors.zero_suppress(x)
    nnz = int(np.count_nonzero(x))
    if packed is None:  # declined only when it would not save a tenth
        assert (n + 7) // 8 + 4 * nnz > 0.9 * x.nbytes
        return
    assert packed.nnz == nnz
    back = tensors.zero_restore(x.shape, tensors.TAG_FLOAT32_LE, packed.nnz, packed.body)
    assert back.tobytes() == x.tobytes()


def test_zero_suppression_declines_dense_and_integer_tensors() -> None:
    assert tensors.zero_suppress(np.ones((1, 3, 8, 8), np.float32)) is None
    assert tensors.zero_suppress(np.zeros((1, 3, 8, 8), np.uint8)) is None


@pytest.mark.parametrize("shape", [(1, 64, 28, 28), (1, 4, 8, 8), (1, 3, 5, 7)])
@pytest.mark.parametrize("relu", [True, False])
def test_payload_nbytes_is_what_the_session_sends(shape: tuple[int, ...], relu: bool) -> None:
    from edgeci_p2p.wire.messages import TileResult
    from edgeci_p2p.wire.session import Session, SessionConfig

    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    if relu:
        x = np.maximum(x, 0)
    a, b = Session(SessionConfig("A")), Session(SessionConfig("B"))
    b.receive_data(a.start())
    a.receive_data(b.start())
    while a.next_event() is not None:
        pass
    empty = len(a.send(TileResult("r", 1, np.zeros((1, 1, 1, 0), np.float32), 0.0)))
    sent = len(a.send(TileResult("r", 1, x, 0.0)))
    overhead = 160 if tensors.payload_nbytes(x) < x.nbytes else 16  # ref map, chunk frame
    assert 0 <= sent - empty - tensors.payload_nbytes(x) <= overhead
    assert (tensors.payload_nbytes(x) < x.nbytes) == (relu and x.nbytes >= 16 * 1024)


# ---- the edges of the tensor rules (each case pinned by a mutation that survived) --------------


def test_tensor_dtype_and_rank_are_refused_with_what_is_wrong() -> None:
    for bad in (np.zeros(3, np.int64), np.zeros(3, np.int16), np.zeros(3, np.float64)):
        why = f"float32, float16 or uint8, not {bad.dtype}"
        with pytest.raises(tensors.TensorError, match=why):
            tensors.tag_for(bad)
    assert tensors.tag_for(np.zeros(3, np.float16)) == tensors.TAG_FLOAT16_LE
    with pytest.raises(tensors.TensorError, match=r"tensor rank 9 outside 1\.\.8"):
        tensors.contiguous_le(np.zeros((1,) * 9, np.float32))
    assert tensors.contiguous_le(np.zeros((1,) * tensors.MAX_RANK, np.float32)).ndim == 8


def test_split_bytes_cuts_every_byte_once_and_refuses_no_size() -> None:
    body = memoryview(b"abcde")
    assert [bytes(c) for c in tensors.split_bytes(body, 1)] == [b"a", b"b", b"c", b"d", b"e"]
    assert [bytes(c) for c in tensors.split_bytes(body, 2)] == [b"ab", b"cd", b"e"]
    assert [bytes(c) for c in tensors.split_bytes(memoryview(b""), 1)] == [b""]  # one chunk
    for size in (0, -1):
        with pytest.raises(tensors.TensorError, match="chunk size must be positive"):
            tensors.split_bytes(body, size)


def test_zero_restore_refuses_bytes_that_do_not_add_up_and_says_how() -> None:
    # 10 float32 values, 3 non-zero: 2 mask bytes + 12 value bytes.
    x = np.zeros(10, np.float32)
    x[[1, 4, 9]] = [1.0, -2.0, 3.0]
    packed = tensors.zero_suppress(x)
    assert packed is not None and packed.nnz == 3 and packed.body.nbytes == 14
    body = bytes(packed.body)
    why = r"shape \[10\] with 3 values needs 14 bytes, got 13"
    with pytest.raises(tensors.TensorError, match=why):
        tensors.zero_restore((10,), tensors.TAG_FLOAT32_LE, 3, memoryview(body[:-1]))
    padded = bytes([body[0], body[1] | 0x01]) + body[2:]  # a bit past the 10th value
    with pytest.raises(tensors.TensorError, match=r"^zero-bitmask: padding bits after the last"):
        tensors.zero_restore((10,), tensors.TAG_FLOAT32_LE, 3, memoryview(padded))
    back = tensors.zero_restore((10,), tensors.TAG_FLOAT32_LE, 3, memoryview(body))
    assert back.tobytes() == x.tobytes()


def f16_with_nonzero(n: int, nnz: int) -> np.ndarray:
    x = np.zeros(n, np.float16)
    x[:nnz] = 1.0
    return x


def test_zero_suppression_is_used_up_to_exactly_nine_tenths_of_the_bytes() -> None:
    # 80 float16 values (160 bytes), 67 non-zero: 10 mask + 134 value bytes = 144,
    # exactly 0.9 of the plain bytes: used. 68 non-zero (146 bytes): not.
    at_limit = tensors.zero_suppress(f16_with_nonzero(80, 67))
    assert at_limit is not None and at_limit.body.nbytes == 144
    assert tensors.payload_nbytes(f16_with_nonzero(80, 67), zero_suppress_from=0) == 144
    assert tensors.zero_suppress(f16_with_nonzero(80, 68)) is None
    # Sparse enough to pass the glance (88 % non-zero), too dense to save a tenth.
    x = np.zeros(100, np.float32)
    x[:88] = 1.0
    assert tensors.zero_suppress(x) is None
    # Half zeros, alternating (every other value: a sample of every second one would
    # see no zero at all).
    alt = np.zeros(20, np.float32)
    alt[::2] = 1.0
    packed = tensors.zero_suppress(alt)
    assert packed is not None and packed.nnz == 10


def test_the_glance_sends_a_dense_looking_map_plain() -> None:
    """A map whose evenly spread sample is over 90 % non-zero is sent plain, even when
    its other values are zeros; at exactly 90 % the whole map is counted."""
    # 2 x 8192 float32: every 4th value (the sample, stride 16384 // 4096) of row 0 is
    # non-zero, and of row 1 zero.
    rows = np.zeros((2, 8192), np.float32)
    rows[0] = 1.0
    # Sampled across both rows: half zeros, so the whole map is counted and suppressed.
    packed = tensors.zero_suppress(rows)
    assert packed is not None and packed.nnz == 8192
    assert tensors.payload_nbytes(rows) == packed.body.nbytes
    # Only the sampled positions non-zero: the glance says dense, sent plain.
    sampled = np.zeros(16384, np.float32)
    sampled[::4] = 1.0
    assert tensors.zero_suppress(sampled) is None
    assert tensors.payload_nbytes(sampled) == sampled.nbytes
    # 8200 values sample 4100 (stride 2); exactly 90 % of the sample non-zero is not
    # "over 90 %": the whole map is counted (3690 of 8200 non-zero) and suppressed.
    edge = np.zeros(8200, np.float32)
    edge[np.arange(0, 2 * 3690, 2)] = 1.0
    packed = tensors.zero_suppress(edge)
    assert packed is not None and packed.nnz == 3690


def test_payload_nbytes_counts_suppression_from_its_threshold_on() -> None:
    x = np.zeros(4096, np.float32)  # 16 KiB of zeros
    x[::16] = 1.0
    suppressed = tensors.zero_suppress(x)
    assert suppressed is not None
    assert tensors.payload_nbytes(x, zero_suppress_from=x.nbytes) == suppressed.body.nbytes
    assert tensors.payload_nbytes(x, zero_suppress_from=x.nbytes + 1) == x.nbytes
    assert tensors.payload_nbytes(x, zero_suppress_from=None) == x.nbytes


def test_encoder_refusals_say_what_and_honour_the_depth() -> None:
    with pytest.raises(LocalProtocolError, match="set has no wire encoding"):
        cbor.encode({1, 2})
    deep: object = 1
    for _ in range(3):
        deep = [deep]
    assert cbor.decode(cbor.encode(deep, max_depth=3)) == deep
    with pytest.raises(LocalProtocolError, match="nesting deeper than 2"):
        cbor.encode(deep, max_depth=2)


# One tensor, wrapped in a one-element array so that positions are not 0: the tag at
# byte 1, its dims at byte 4, its typed array's tag at byte 6.
GOOD_TENSOR = "81 d828 82 8102 d855 48 0000803f00000040"
BAD_TENSORS = [
    ("81 d828 83 8102 d855 48 0000803f00000040 00", "tag 40 must hold a two-element array", 1),
    ("81 d828 42 0102", "tag 40 must hold a two-element array [dims, typed array]", 1),
    ("81 d828 82 02 d855 48 0000803f00000040", "tensor dims must be an array", 4),
    ("81 d828 82 80 d855 40", "tensor rank 0 outside 1..8", 4),
    ("81 d828 82 8121 d855 48 0000803f00000040", "dimensions must be unsigned integers < 2**31", 4),
    ("81 d828 82 811a80000000 d855 40", "dimensions must be unsigned integers < 2**31", 4),
    ("81 d828 82 8102 d856 48 0000803f00000040", "tag 85 (float32-LE), 84 (float16-LE) or 64", 6),
    ("81 d828 82 8102 d855 02", "a typed array must hold a byte string", 6),
]


@pytest.mark.parametrize("hexdata,why,pos", BAD_TENSORS, ids=[b[1][:24] for b in BAD_TENSORS])
def test_a_bad_tensor_is_refused_saying_what_and_where(hexdata: str, why: str, pos: int) -> None:
    assert np.array_equal(cbor.decode(bytes.fromhex(GOOD_TENSOR.replace(" ", "")))[0], [1, 2])
    with pytest.raises(RemoteProtocolError) as info:
        cbor.decode(bytes.fromhex(hexdata.replace(" ", "")))
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    assert why in info.value.message and info.value.message.endswith(f" at byte {pos}")


def test_tensor_dims_up_to_2_31_minus_1_and_lengths_that_disagree() -> None:
    # A dimension of exactly MAX_DIM is accepted (with a zero beside it: no bytes).
    big = cbor.decode(bytes.fromhex("81d8288282 1a7fffffff 00 d855 40".replace(" ", "")))
    assert big[0].shape == (2**31 - 1, 0)
    with pytest.raises(RemoteProtocolError) as info:
        cbor.decode(bytes.fromhex("81 d828 82 8102 d855 47 0000803f000000".replace(" ", "")))
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert info.value.message == (
        "tensor at byte 1: shape [2] as float32 needs 8 bytes, the item holds 7"
    )


def test_heads_take_the_narrowest_width_up_to_64_bits() -> None:
    assert tensors.head(0, 23) == b"\x17"
    assert tensors.head(0, 24) == b"\x18\x18"
    assert tensors.head(0, 2**32) == b"\x1b" + (2**32).to_bytes(8, "big")
    assert tensors.head(0, 2**64 - 1) == b"\x1b" + b"\xff" * 8
    assert tensors.head(6, 40, width=2) == b"\xd9\x00\x28"  # widened to align data
    with pytest.raises(tensors.TensorError, match=r"^CBOR argument 18446744073709551616 does"):
        tensors.head(0, 2**64)


def test_wire_shapes_and_builds_are_checked_with_what_is_wrong() -> None:
    assert tensors.check_shape([0, 3]) == (0, 3)
    assert tensors.check_shape([2**31 - 1]) == (2**31 - 1,)
    for dims, why in [
        ("12", "tensor dims must be an array of unsigned integers"),
        ([], "tensor rank 0 outside 1..8"),
        ([1] * 9, "tensor rank 9 outside 1..8"),
        ([-1], "tensor dimension -1 is not an integer in 0..2147483647"),
        ([2**31], "tensor dimension 2147483648 is not an integer in 0..2147483647"),
        ([1.0], "tensor dimension 1.0 is not an integer in 0..2147483647"),
        ([True], "tensor dimension True is not an integer"),
    ]:
        with pytest.raises(tensors.TensorError) as info:
            tensors.check_shape(dims)
        assert str(info.value).startswith(why), (dims, info.value)
    assert tensors.check_shape([1] * 8) == (1,) * 8
    with pytest.raises(tensors.TensorError, match=r"^typed-array tag 86 is not float32-LE"):
        tensors.build((2,), 86, memoryview(bytes(8)))
    with pytest.raises(tensors.TensorError) as info:
        tensors.build((2, 3), tensors.TAG_FLOAT16_LE, memoryview(bytes(8)))
    assert str(info.value) == "tensor of shape [2, 3] and dtype float16 needs 12 bytes, got 8"


def chunk_ref(**kw: object) -> dict[str, object]:
    return {"chunked": 7, "dtype": "float32", "shape": [2, 3], "chunks": 2, **kw}


def test_chunk_references_are_checked_field_by_field() -> None:
    ref = tensors.ChunkRef.from_dict(chunk_ref())
    assert ref == tensors.ChunkRef(7, "float32", (2, 3), 2) and ref.nbytes == 24
    zb = tensors.ZERO_BITMASK
    top = tensors.ChunkRef.from_dict(chunk_ref(chunked=2**32 - 1, encoding=zb, nnz=6))
    assert top.stream == 2**32 - 1 and top.nnz == 6 and top.nbytes == 1 + 6 * 4
    assert top.held_bytes == 25 + 24
    for fields, why in [
        (chunk_ref(extra=1), "a chunked-tensor reference has keys ['chunked', 'chunks', 'dtype'"),
        (chunk_ref(chunked=2**32), "chunked-tensor stream id must be an integer in 0..2**32-1"),
        (chunk_ref(chunked=-1), "chunked-tensor stream id must be an integer"),
        (chunk_ref(chunked="7"), "chunked-tensor stream id must be an integer"),
        (chunk_ref(dtype="float64"), "chunked-tensor dtype 'float64' is not float32 or float16"),
        (chunk_ref(chunks=0), "chunked-tensor chunk count must be a positive integer"),
        (chunk_ref(chunks="2"), "chunked-tensor chunk count must be a positive integer"),
        (chunk_ref(encoding="gzip", nnz=1), "chunked-tensor encoding 'gzip' is not zero-bitmask"),
        (chunk_ref(dtype="uint8", encoding=zb, nnz=1), "pixels are not zero-suppressed"),
        (chunk_ref(encoding=zb, nnz=7), "chunked-tensor nnz 7 is not an integer in 0..6"),
        (chunk_ref(encoding=zb, nnz=-1), "chunked-tensor nnz -1 is not an integer"),
    ]:
        with pytest.raises(tensors.TensorError) as info:
            tensors.ChunkRef.from_dict(fields)
        assert str(info.value) == why or str(info.value).startswith(why), (fields, info.value)


def test_the_assembler_takes_chunks_in_order_and_exactly_the_announced_bytes() -> None:
    ref = tensors.ChunkRef(9, "float32", (2,), 2)
    asm = tensors.TensorAssembler(ref)
    with pytest.raises(tensors.TensorError, match=r"^stream 9 is incomplete$"):
        asm.array()
    with pytest.raises(tensors.TensorError, match=r"^stream 9: chunk 1 where 0 was due$"):
        asm.add(1, memoryview(bytes(4)))
    asm.add(0, memoryview(np.float32([1.5]).tobytes()))
    with pytest.raises(tensors.TensorError, match=r"^stream 9: chunks exceed the announced 8"):
        asm.add(1, memoryview(bytes(5)))
    with pytest.raises(tensors.TensorError, match=r"^stream 9: chunks total 7 of 8 bytes$"):
        asm.add(1, memoryview(bytes(3)))
    asm.add(1, memoryview(np.float32([-2.0]).tobytes()))
    assert asm.complete and asm.array().tolist() == [1.5, -2.0]


def nested(kind: str, levels: int) -> object:
    """``levels`` containers (lists or one-key maps) around a small tensor."""
    obj: object = np.ones(2, np.float32)
    for _ in range(levels):
        obj = [obj] if kind == "list" else {"k": obj}
    return obj


@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("limit", [1, 2, 4])
def test_encoder_and_decoder_agree_on_the_depth_limit(kind: str, limit: int) -> None:
    # The tensor is one level itself: ``limit - 1`` containers around it fit.
    fits = cbor.encode(nested(kind, limit - 1), max_depth=limit)
    cbor.decode(fits, max_depth=limit)
    with pytest.raises(LocalProtocolError, match=f"^nesting deeper than {limit} "):
        cbor.encode(nested(kind, limit), max_depth=limit)
    too_deep = cbor.encode(nested(kind, limit), max_depth=limit + 1)
    with pytest.raises(RemoteProtocolError, match=f"nesting deeper than {limit}"):
        cbor.decode(too_deep, max_depth=limit)


def test_encoder_integers_bytes_and_refusals() -> None:
    assert cbor.encode(-(2**64)) == b"\x3b" + b"\xff" * 8
    assert cbor.decode(cbor.encode(-(2**64))) == -(2**64)
    for big in (2**64, -(2**64) - 1):
        with pytest.raises(LocalProtocolError, match=f"^integer {big} does not fit in 64 bits"):
            cbor.encode(big)
    # Byte strings from bytes, bytearray and memoryviews of any format: their bytes.
    raw = bytes(range(8))
    for obj in (raw, bytearray(raw), memoryview(raw), memoryview(np.frombuffer(raw, np.uint16))):
        assert cbor.encode(obj) == b"\x48" + raw
    with pytest.raises(LocalProtocolError, match=r"^map key 1 is not a text string"):
        cbor.encode({1: 2})
    with pytest.raises(LocalProtocolError, match=r"^tensors travel as float32, float16 or uint8"):
        cbor.encode(np.zeros(2, np.int64))


DECODER_REFUSALS = [
    ("", "item truncated at byte 0"),
    ("1901", "head truncated at byte 0"),
    ("81 1f", "indefinite-length items and break codes are refused at byte 1"),
    ("81 1c", "reserved additional information 28 at byte 1"),
    ("01 0203", "2 bytes after the item at byte 1"),
    ("81 62fffe", "text string is not valid UTF-8 at byte 1"),
    ("81 8201", "array of 2 items runs past the end at byte 1"),
    ("81 a2616101", "map of 2 pairs runs past the end at byte 1"),
    ("a1 0102", "map keys must be text strings at byte 1"),
    ("a2 616101 616102", "duplicate map key 'a' at byte 4"),
    ("81 c101", "tag 1 is not accepted (only 40 over 84/85) at byte 1"),
    ("81 f7", "simple value 23 is not accepted at byte 1"),
    ("81 430102", "length 3 runs past the end of the item at byte 2"),
]


@pytest.mark.parametrize("hexdata,message", DECODER_REFUSALS, ids=[m for _, m in DECODER_REFUSALS])
def test_every_decoder_refusal_says_what_and_where(hexdata: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        cbor.decode(bytes.fromhex(hexdata.replace(" ", "")))
    assert info.value.code == ErrorCode.MALFORMED_FRAME and info.value.message == message


def test_decoder_depth_and_buffers_of_any_shape() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        cbor.decode(b"\x81\x81\x01", max_depth=1)
    assert info.value.message == "nesting deeper than 1 at byte 1"
    assert cbor.decode(b"\xa1\x61a\x81\x01", max_depth=2) == {"a": [1]}
    raw = bytearray(b"\x83\x01\x02\x03")
    assert cbor.decode(memoryview(raw).cast("H")) == [1, 2, 3]  # 16-bit items: read as bytes
    assert cbor.decode(memoryview(raw).cast("B", shape=[2, 2])) == [1, 2, 3]  # 2-D
    assert cbor.decode(raw) == [1, 2, 3]
